//! What the binary says when it starts: a bad setting refused with status 64, naming what
//! the user set; log lines without terminal colour codes where they are stored.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::free_port;

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    // No Redis on this port: the lines up to "listening" are all that is needed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
        .args(["--redis-url", &format!("redis://127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("a log line");
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(text.contains("listening"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a piped log:\n{text:?}"
    );
}

#[test]
fn a_bad_setting_exits_64_naming_what_was_set() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_herald"))
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run herald");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };
    let (code, stderr) = run(&[("HERALD_HEARTBEAT", "abc")], &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("HERALD_HEARTBEAT"), "{stderr}");
    let (code, stderr) = run(&[], &["--heartbeat", "abc"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--heartbeat"), "{stderr}");
    let (code, stderr) = run(&[("HERALD_HISTORY", "chat:*=300")], &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("HERALD_HISTORY"), "{stderr}");
    // Help is not a refusal.
    assert_eq!(run(&[], &["--help"]).0, Some(0));
}
