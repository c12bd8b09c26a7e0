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
    keep_freed_memory();
    slope::reader::quiet_parquet_crate_panics();
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

/// Asks glibc's allocator to keep freed memory for reuse instead of handing it back to the
/// kernel. The parquet crate allocates and frees a buffer of about half a megabyte for every
/// column chunk it decompresses; by default glibc serves those from a worker's arena and then
/// trims the arena back with `madvise(MADV_DONTNEED)` once a few are free, so the next chunk
/// faults its pages in again. That cost a third of a `normal` epoch's system time (10M rows ×
/// 64 features, 2 threads: 0.67 → 0.36 s of system CPU, no change in peak RSS; BENCHMARKS.md).
/// Peak memory is unchanged because the buffers are reused rather than added to; a batch job
/// does not need its memory back before it exits.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's `<malloc.h>`.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only sets allocator parameters; it is called before any thread is
        // started, with parameters glibc documents. A refusal (return 0) leaves the defaults.
        unsafe {
            // Allocations up to 32 MiB come from the arenas (the default threshold adapts
            // upwards too, but only after it has mapped and unmapped a few)...
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            // ...and an arena is trimmed only when 256 MiB at its top are free.
            mallopt(M_TRIM_THRESHOLD, 256 << 20);
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
