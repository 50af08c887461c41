//! The `aegis` binary: everything lives in the library; see `aegis::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    aegis::cli::main()
}
