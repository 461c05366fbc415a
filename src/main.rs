//! The `bottle` binary is glue: parse the command line, run one operation,
//! turn its result into a documented exit code. The work lives in the library.

fn main() -> std::process::ExitCode {
    bottle::cli::main()
}
