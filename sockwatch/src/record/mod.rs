//! Recording: the event stream as files, and those files read back.
//!
//! - [`sink`]: where decoded events go: text, JSON Lines or CSV, on stdout or in a file.
//! - [`output`]: opening output files safely (private mode, no planted links).
//! - [`committed`]: files that only ever hold complete lines.
//! - [`rotate`] and [`compress`]: rotation by size or age, compressed copies of rotated files.
//! - [`recordings`]: the files `report` reads, plain or compressed, in time order.
pub mod committed;
pub mod compress;
pub mod output;
pub mod recordings;
pub mod rotate;
pub mod sink;
