//! `sockwatch check`: what this kernel lets sockwatch see, and whether its programs load and
//! attach here (they are detached again at once).
use std::fmt::Write as _;

use anyhow::Context as _;

use crate::{
    cli::{CheckArgs, SummaryFormat},
    filter::Filter,
    kernel::capabilities::Capabilities,
    kernel::loader::{self, LoadOptions, Tracer},
};

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let load = args.kernel.load_options(crate::cli::RING_SIZE_COUNTING);
    // Fails on a missing core (BTF, the ring buffer) with the minimum kernel named.
    let kernel = loader::inspect(&load)?;
    let object = if kernel.capabilities.programs.compat {
        "compat"
    } else {
        "current"
    };
    // As `trace` loads them, then as `top` does (counting in the kernel: more code for the
    // verifier).
    let trial = [load.mode, crate::commands::top::counting_mode(false)]
        .into_iter()
        .try_for_each(|mode| {
            let load = LoadOptions {
                mode,
                ..load.clone()
            };
            let mut tracer = Tracer::load(&load, &Filter::default(), &kernel)?;
            tracer.attach()?;
            tracer.detach();
            Ok::<_, loader::LoadError>(())
        });
    let error = trial.as_ref().err().map(ToString::to_string);
    match args.format {
        SummaryFormat::Json => {
            let mut v = kernel.capabilities.check_json();
            v["programs"] = serde_json::json!({
                "build": object,
                "loaded": error.is_none(),
                "error": error,
            });
            println!("{v}");
        }
        SummaryFormat::Table => print!("{}", table(&kernel.capabilities, object, error.as_deref())),
    }
    trial.context("the programs do not load on this kernel")
}

/// The text form: one line per capability, then the trial load's outcome.
fn table(caps: &Capabilities, object: &str, error: Option<&str>) -> String {
    let mut out = format!("kernel {}\n", caps.kernel);
    let width = caps.list.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &caps.list {
        let mark = if c.available { "yes" } else { "no " };
        let _ = write!(out, "  {:width$}  {mark}  {}", c.name, c.what);
        if let Some(via) = c.via {
            let _ = write!(out, " (via {via})");
        }
        out.push('\n');
        if let Some(note) = &c.note {
            let _ = writeln!(out, "  {:width$}       {note}", "");
        }
    }
    match error {
        None => {
            let _ = writeln!(out, "programs: the {object} build loads and attaches here");
        }
        Some(e) => {
            let _ = writeln!(out, "programs: the {object} build does not load: {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::probes::Probes;

    #[test]
    fn table_names_what_is_missing_and_the_outcome() {
        let caps = Probes {
            overflow_reason: false,
            ..Probes::everything()
        }
        .capabilities("6.1.0-50-cloud-amd64".into());
        let text = table(&caps, "current", None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "kernel 6.1.0-50-cloud-amd64");
        let overflow = lines
            .iter()
            .position(|l| l.trim_start().starts_with("listen_overflow_events"))
            .unwrap();
        assert!(lines[overflow].contains("  no   "), "{}", lines[overflow]);
        assert!(lines[overflow + 1].contains("TCP_LISTEN_OVERFLOW"));
        assert_eq!(
            *lines.last().unwrap(),
            "programs: the current build loads and attaches here"
        );
        let failed = table(&caps, "compat", Some("boom"));
        assert!(failed.ends_with("programs: the compat build does not load: boom\n"));
    }
}
