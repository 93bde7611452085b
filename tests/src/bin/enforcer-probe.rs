//! A workload for the end-to-end tests and the demo. `listen ADDR PORT` prints `listening`
//! once the socket accepts connections (the readiness signal) and greets every client with
//! `hi`; `connect ADDR PORT` prints what the application saw: `connected <data>` or
//! `error <errno>`; `connect-loop ADDR PORT SECONDS` (for `cargo xtask bench connect`) opens
//! connections one after another, each read to the end, and prints `rate <per second>`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr), Some(port)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: enforcer-probe listen|connect|connect-loop ADDR PORT [SECONDS]");
        return ExitCode::from(2);
    };
    let Ok(addr) = format!("{}:{port}", bracket(addr)).parse::<SocketAddr>() else {
        eprintln!("bad address {addr} {port}");
        return ExitCode::from(2);
    };
    match mode.as_str() {
        "listen" => listen(addr),
        "connect" => {
            connect(addr);
            ExitCode::SUCCESS
        }
        "connect-loop" => {
            let secs = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2.0);
            connect_loop(addr, Duration::from_secs_f64(secs))
        }
        _ => ExitCode::from(2),
    }
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

fn listen(addr: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(err) => {
            println!("error {}", err.raw_os_error().unwrap_or(0));
            return ExitCode::FAILURE;
        }
    };
    println!("listening");
    let _ = std::io::stdout().flush();
    for mut stream in listener.incoming().flatten() {
        let _ = stream.write_all(b"hi");
    }
    ExitCode::SUCCESS
}

fn connect(addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(mut stream) => {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut data = String::new();
            let _ = stream.read_to_string(&mut data);
            println!("connected {data}");
        }
        Err(err) => println!("error {}", err.raw_os_error().unwrap_or(0)),
    }
}

fn connect_loop(addr: SocketAddr, duration: Duration) -> ExitCode {
    let start = std::time::Instant::now();
    let mut count = 0u64;
    let mut buf = [0u8; 16];
    while start.elapsed() < duration {
        match TcpStream::connect(addr) {
            // Reading to EOF waits for the server's accept, greeting and close, so each
            // iteration is one full connect + accept and the listen queue never overflows.
            Ok(mut stream) => while stream.read(&mut buf).is_ok_and(|n| n > 0) {},
            Err(err) => {
                println!("error {}", err.raw_os_error().unwrap_or(0));
                return ExitCode::FAILURE;
            }
        }
        count += 1;
    }
    println!("rate {:.0}", count as f64 / start.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
