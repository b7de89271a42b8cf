//! The `k2hdkc` command. Subcommands arrive with issue 3 (server, shell, bench) and 4.

fn main() {
    eprintln!("k2hdkc: no subcommands yet");
    std::process::exit(2);
}
