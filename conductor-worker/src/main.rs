//! The default conductor binary; see the library for how it works.

fn main() -> std::process::ExitCode {
    conductor_worker::main_with_args(std::env::args().skip(1))
}
