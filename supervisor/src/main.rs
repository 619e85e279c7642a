//! The `supervisor` binary. With the `embedded-conductor` feature (on by default),
//! `supervisor conductor ...` (hidden) serves as the conductor when no `conductor-worker` binary
//! sits next to this one: `cargo run -p supervisor` works on a fresh clone.

fn main() -> std::process::ExitCode {
    #[cfg(feature = "embedded-conductor")]
    {
        let mut args = std::env::args().skip(1);
        if args.next().as_deref() == Some("conductor") {
            return conductor_worker::main_with_args(args);
        }
    }
    let code = supervisor::cli::main();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
