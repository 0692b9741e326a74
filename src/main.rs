//! The `taptun` command: argv to Config, logging, run, exit status.

use std::io::Write;
use std::process::ExitCode;

use taptun::config::{self, Command};
use taptun::error::{EXIT_USAGE, Error};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match Command::parse(&args, &|var| std::env::var(var).ok()) {
        Ok(Command::Help) => {
            print!("{}", config::help());
            Ok(())
        }
        Ok(Command::Version) => {
            println!("taptun {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Ok(Command::GenKey(path)) => taptun::genkey(path.as_deref(), &mut std::io::stdout().lock()),
        Ok(Command::Check(config)) => {
            taptun::log::init(config.verbosity, taptun::log::Sink::Stderr);
            taptun::check(&config).map(|()| println!("taptun: the configuration is valid"))
        }
        Ok(Command::PubKey) => taptun::unbuffered_stdin()
            .and_then(|mut stdin| taptun::pubkey(&mut stdin, &mut std::io::stdout().lock())),
        Ok(Command::Tunnel(config)) => {
            taptun::log::init(config.verbosity, taptun::log_sink(&config));
            taptun::run(*config).inspect_err(|e| log::debug!("exiting: {e}"))
        }
        Err(e) => {
            // Logging is not up yet, and under inetd fd 2 is the client's
            // socket: the client would read the message as a frame length.
            if config::mentions_inetd(&args) || taptun::sys::is_socket(2) {
                taptun::log::init(0, taptun::log::Sink::Syslog);
            }
            Err(e)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints the error: through the log once it is up (in -i mode stderr may
/// be the tunnel's socket, and the log syslog), else on stderr.
fn report(e: &Error) {
    let hint = if e.exit_code() == EXIT_USAGE {
        " (see taptun --help)"
    } else {
        ""
    };
    if log::max_level() != log::LevelFilter::Off {
        log::error!("{e}{hint}");
    } else {
        let _ = writeln!(std::io::stderr(), "taptun: error: {e}{hint}");
    }
}
