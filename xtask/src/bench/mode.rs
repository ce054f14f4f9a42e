//! The rows of the side-by-side rounds, and the order each round runs them in.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Untraced,
    Trace,
    Top,
    /// `top` from the `hooks-only` build.
    Hooks,
    Bpftrace,
    /// `top --ring-size` (--top-ring-size).
    TopRing,
    /// `trace` of the --baseline build.
    TraceBaseline,
    /// `top` of the --baseline build.
    TopBaseline,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Trace => "trace",
            Mode::Top => "top",
            Mode::Hooks => "hooks",
            Mode::Bpftrace => "bpftrace",
            Mode::TopRing => "top-ring",
            Mode::TraceBaseline => "trace-baseline",
            Mode::TopBaseline => "top-baseline",
        }
    }

    /// `sockwatch trace` (every event to a file), of either build.
    pub(super) fn traces(self) -> bool {
        matches!(self, Mode::Trace | Mode::TraceBaseline)
    }

    /// The row of the --baseline build that runs the same command as this one.
    pub(super) fn baseline(self) -> Option<Mode> {
        match self {
            Mode::Trace => Some(Mode::TraceBaseline),
            Mode::Top => Some(Mode::TopBaseline),
            _ => None,
        }
    }
}

/// The order in which round `round` (from 1) runs `modes`, as indices into it: as listed,
/// except that a row of the --baseline build runs next to its own build's row, after it in odd
/// rounds and before it in even ones. A build and its baseline are then compared on runs
/// seconds apart, and neither always runs first or closer to the untraced run.
pub(super) fn run_order(modes: &[Mode], round: u32) -> Vec<usize> {
    let index = |m: Mode| modes.iter().position(|&x| x == m);
    let paired = |m: Mode| modes.iter().any(|x| x.baseline() == Some(m));
    let mut order = Vec::with_capacity(modes.len());
    for (i, &m) in modes.iter().enumerate() {
        if paired(m) {
            // Runs with its build's row.
            continue;
        }
        match m.baseline().and_then(index) {
            Some(b) if round.is_multiple_of(2) => order.extend([b, i]),
            Some(b) => order.extend([i, b]),
            None => order.push(i),
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_row_runs_next_to_its_build_first_in_even_rounds() {
        use Mode::*;
        let modes = [
            Untraced,
            Trace,
            Top,
            Hooks,
            TraceBaseline,
            TopBaseline,
            Bpftrace,
        ];
        let names = |r| {
            run_order(&modes, r)
                .into_iter()
                .map(|i| modes[i].name())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(1),
            [
                "untraced",
                "trace",
                "trace-baseline",
                "top",
                "top-baseline",
                "hooks",
                "bpftrace"
            ]
        );
        assert_eq!(
            names(2),
            [
                "untraced",
                "trace-baseline",
                "trace",
                "top-baseline",
                "top",
                "hooks",
                "bpftrace"
            ]
        );
        // Without the baseline rows: as listed.
        assert_eq!(run_order(&[Untraced, Trace, Top], 2), [0, 1, 2]);
    }
}
