//! A raw control socket client for the tests, which run it as other users: it connects to the
//! socket named by its one argument and prints `connected` (the readiness signal), then sends
//! each line it reads on stdin exactly as it is, without the newline, so a test decides how
//! a request arrives (a byte at a time, or never). It prints `reply <line>` for each line the
//! daemon sends, `closed` once the daemon ends the connection (`closed <errno>` if reading
//! failed), and then exits. A failed send prints `unsent <errno>` and sends nothing more; the
//! daemon's reply is still read.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    process::ExitCode,
    thread,
};

fn main() -> ExitCode {
    let Some(socket) = std::env::args().nth(1) else {
        eprintln!("usage: enforcer-client SOCKET");
        return ExitCode::from(2);
    };
    let stream = match UnixStream::connect(&socket) {
        Ok(stream) => stream,
        Err(err) => {
            println!("error {}", err.raw_os_error().unwrap_or(0));
            return ExitCode::FAILURE;
        }
    };
    say("connected");
    let Ok(mut sender) = stream.try_clone() else {
        return ExitCode::FAILURE;
    };
    thread::spawn(move || {
        for line in io::stdin().lock().lines().map_while(Result::ok) {
            if let Err(err) = sender.write_all(line.as_bytes()) {
                say(&format!("unsent {}", err.raw_os_error().unwrap_or(0)));
                return;
            }
        }
    });
    let mut lines = BufReader::new(stream).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => say(&format!("reply {line}")),
            None => break say("closed"),
            Some(Err(err)) => break say(&format!("closed {}", err.raw_os_error().unwrap_or(0))),
        }
    }
    ExitCode::SUCCESS
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
