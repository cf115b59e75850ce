//! TLS to Redis, as managed Redis services require: a real `redis-server --tls-port` with
//! certificates this test makes (a private CA, a server certificate for 127.0.0.1, a
//! client certificate for mutual TLS).

use std::path::Path;
use std::process::Command;

use crate::delivery::wait_channels;
use crate::support::{free_port, secs, Client, Gateway, Redis};

/// Runs openssl with `args` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate for `name` signed by the CA in `dir` (ca.crt, ca.key), with `ext` as its
/// extensions.
fn issue(dir: &Path, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extension file");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_a_private_ca_redis() {
    let temp = crate::support::TempDir::new("tls");
    let dir = temp.path().to_path_buf();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=herald-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    issue(&dir, "server", "subjectAltName=IP:127.0.0.1\n");
    issue(&dir, "client", "extendedKeyUsage=clientAuth\n");
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();

    let tls_port = free_port().to_string();
    // Plain port for the test's own connection; TLS, with client certificates required,
    // for Herald's.
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &file("server.crt"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.crt"),
        "--tls-auth-clients",
        "yes",
    ])
    .await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let gw = Gateway::start(
        &url,
        &[
            "--redis-ca-file",
            &file("ca.crt"),
            "--redis-client-cert",
            &file("client.crt"),
            "--redis-client-key",
            &file("client.key"),
        ],
    )
    .await;
    gw.wait_ready(secs(10)).await;
    let mut client = Client::connect(&gw.ws_url("channels=secure")).await;
    wait_channels(&redis, &["secure"], secs(5)).await;
    redis.publish("secure", "over tls").await;
    assert_eq!(
        client.expect_message("secure", secs(5)).await["data"],
        "over tls"
    );
    // The connection Redis saw is the TLS one.
    let clients = format!(
        "{:?}",
        redis.raw(&["CLIENT", "LIST", "TYPE", "pubsub"]).await
    );
    assert!(
        clients.contains(&format!("laddr=127.0.0.1:{tls_port}")),
        "{clients}"
    );
}
