//! The `taptun` command: argv to Config, logging, run, exit status.
//!
//! One rule for errors: a mistake in the command line, found before logging
//! starts, is printed as `taptun: error: ... (see taptun --help)`; every
//! later error goes through the log once it is up (as a log line, or to
//! syslog), and `genkey` and `pubkey`, which log nothing, print
//! `taptun: error: ...`; neither with the --help hint, which cannot help with
//! a file's mode or a refused connection.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use taptun::{Command, SEE_HELP};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match Command::parse(&args, &|var| std::env::var(var).ok()) {
        Ok(command) => command,
        Err(e) => {
            // Logging is not up yet, and under inetd fd 2 is the client's
            // socket: the client would read the message as a frame length.
            if taptun::mentions_inetd(&args) || taptun::is_socket(2) {
                taptun::init_log(0, taptun::LogSink::Syslog);
            }
            report(&format!("{e} {SEE_HELP}"));
            return ExitCode::from(e.exit_code());
        }
    };
    let result = match command {
        Command::Help => {
            print!("{}", taptun::help());
            Ok(())
        }
        Command::Version => {
            println!("taptun {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::GenKey(path) => {
            let stdout = std::io::stdout();
            let label = stdout.is_terminal();
            taptun::genkey(path.as_deref(), label, &mut stdout.lock())
        }
        Command::Check(config) => {
            taptun::init_log(config.verbosity, taptun::LogSink::Stderr);
            taptun::check(&config).map(|()| println!("taptun: the configuration is valid"))
        }
        Command::PubKey(Some(path)) => taptun::pubkey_of_file(&path, &mut std::io::stdout().lock()),
        Command::PubKey(None) => taptun::unbuffered_stdin()
            .and_then(|mut stdin| taptun::pubkey(&mut stdin, &mut std::io::stdout().lock())),
        Command::Status { path, json } => {
            taptun::status(&path, json, &mut std::io::stdout().lock())
        }
        Command::Tunnel(config) => {
            taptun::init_log(config.verbosity, taptun::log_sink(&config));
            taptun::run(*config).inspect_err(|e| log::debug!("exiting: {e}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints an error: through the log once it is up (in -i mode stderr may
/// be the tunnel's socket, and the log syslog), else on stderr.
fn report(message: &str) {
    if log::max_level() != log::LevelFilter::Off {
        log::error!("{message}");
    } else {
        let _ = writeln!(std::io::stderr(), "taptun: error: {message}");
    }
}
