//! The `slope` command line: parses flags, calls the library, prints results.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use slope::ErrorClass;

/// Exit codes, documented in `slope --help` and the README.
mod exit {
    pub const DATA: u8 = 3;
    pub const DIVERGED: u8 = 4;
    pub const INTERRUPTED: u8 = 5;
    pub const OTHER: u8 = 1;
}

fn main() -> ExitCode {
    let args = match <cli::Args as clap::Parser>::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            cli::clear_progress();
            let _ = writeln!(std::io::stderr(), "slope: error: {e:#}");
            let class =
                e.chain().find_map(|c| c.downcast_ref::<slope::Error>()).map(slope::Error::class);
            ExitCode::from(match class {
                Some(ErrorClass::Usage) => 2,
                Some(ErrorClass::Data) => exit::DATA,
                Some(ErrorClass::Diverged) => exit::DIVERGED,
                Some(ErrorClass::Interrupted) => exit::INTERRUPTED,
                _ => exit::OTHER,
            })
        }
    }
}

/// A closed stdout (`slope inspect … | head`) is a normal way for output to end.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
