//! Access control: every refusal is a real client against a real gateway, and each test
//! fails if its check is removed (the same client is accepted in the control case).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::client::refused_status;
use crate::support::{millis, secs, start, Client};

pub const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub` granting `channels`, valid for `ttl` seconds.
pub fn token(sub: &str, channels: &[&str], ttl: u64) -> String {
    sign_hs(
        SECRET,
        json!({"sub": sub, "channels": channels, "exp": now() + ttl}),
    )
}

fn sign_hs(secret: &str, claims: Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn sign_pem(alg: Algorithm, private_pem: &str, kid: Option<&str>, claims: Value) -> String {
    let pem = std::fs::read(format!("{KEYS}/{private_pem}")).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Connects with extra request headers; `Err` holds the HTTP refusal.
async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name: tungstenite::http::HeaderName = name.parse().unwrap();
        request
            .headers_mut()
            .append(name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => {
            let mut client = Client {
                ws,
                welcome: Value::Null,
            };
            client.welcome = client.expect_op("welcome", secs(5)).await;
            Ok(client)
        }
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect to {url} failed without an HTTP answer: {e}"),
    }
}

const AUTH: &[&str] = &[
    "--jwt-secret",
    SECRET,
    "--public-channels",
    "lobby,public:*",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_before_the_upgrade() {
    let (_redis, gateway) = start(AUTH).await;
    let good = token("u42", &["user:42:*"], 60);

    assert_eq!(refused_status(&gateway.ws_url("")).await, 401, "no token");
    assert_eq!(refused_status(&gateway.ws_url("token=garbage")).await, 401);
    let forged = sign_hs(
        "another-secret-also-32-bytes-long!!",
        json!({"sub": "u42", "exp": now() + 60}),
    );
    assert_eq!(
        refused_status(&gateway.ws_url(&format!("token={forged}"))).await,
        401
    );
    let expired = sign_hs(SECRET, json!({"sub": "u42", "exp": now() - 5}));
    assert_eq!(
        refused_status(&gateway.ws_url(&format!("token={expired}"))).await,
        401
    );
    let no_exp = sign_hs(SECRET, json!({"sub": "u42"}));
    assert_eq!(
        refused_status(&gateway.ws_url(&format!("token={no_exp}"))).await,
        401
    );
    let not_yet = sign_hs(SECRET, json!({"exp": now() + 60, "nbf": now() + 30}));
    assert_eq!(
        refused_status(&gateway.ws_url(&format!("token={not_yet}"))).await,
        401
    );

    // The same gateway accepts a good token, by query or by header.
    Client::connect(&gateway.ws_url(&format!("token={good}"))).await;
    let bearer = format!("Bearer {good}");
    let header = connect_with(&gateway.ws_url(""), &[("authorization", &bearer)]).await;
    assert!(
        header.is_ok(),
        "Authorization header refused: {header:?}",
        header = header.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_limited_to_the_grant_and_public_patterns() {
    let (redis, gateway) = start(AUTH).await;
    let good = token("u42", &["user:42:*"], 60);
    let url = gateway.ws_url(&format!("token={good}"));

    // A query channel outside the grant is refused before the upgrade.
    let outside = gateway.ws_url(&format!("token={good}&channels=user:43:inbox"));
    assert_eq!(refused_status(&outside).await, 403);

    let mut client = Client::connect(&url).await;
    let held = client
        .subscribe(1, &["user:42:inbox", "lobby", "public:news"])
        .await;
    assert_eq!(held, ["lobby", "public:news", "user:42:inbox"]);

    // All-or-nothing: one forbidden name refuses the whole request.
    let reply = client
        .request(
            json!({"op": "subscribe", "id": 2, "channels": ["user:42:other", "user:43:inbox"]}),
        )
        .await;
    assert_eq!(
        (&reply["op"], &reply["code"]),
        (&json!("error"), &json!("forbidden")),
        "{reply}"
    );
    assert_eq!(
        redis.publish("user:42:other", "{}").await,
        0,
        "nothing subscribed"
    );
    redis.publish("user:43:inbox", "{}").await;
    redis.publish("user:42:inbox", r#"{"marker":1}"#).await;
    let frame = client.expect_message("user:42:inbox", secs(5)).await;
    assert_eq!(
        frame["data"]["marker"], 1,
        "a forbidden channel's message came first: {frame}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_jwks_keys() {
    let rsa = format!("{KEYS}/rsa-public.pem");
    let (_r1, by_rsa) = start(&["--jwt-public-key", &rsa]).await;
    let claims = json!({"sub": "a", "exp": now() + 60, "channels": ["x"]});
    let signed = sign_pem(Algorithm::RS256, "rsa-private.pem", None, claims.clone());
    Client::connect(&by_rsa.ws_url(&format!("token={signed}&channels=x"))).await;
    let hs = sign_hs(SECRET, claims.clone());
    assert_eq!(
        refused_status(&by_rsa.ws_url(&format!("token={hs}"))).await,
        401,
        "HS256 against an RSA key"
    );

    let ec = format!("{KEYS}/ec-public.pem");
    let (_r2, by_ec) = start(&["--jwt-public-key", &ec]).await;
    let signed = sign_pem(Algorithm::ES256, "ec-private.pem", None, claims.clone());
    Client::connect(&by_ec.ws_url(&format!("token={signed}"))).await;

    // A JWKS file with both keys, chosen by kid.
    let jwks_dir = crate::support::TempDir::new("jwks");
    let jwks_path = jwks_dir.path().join("jwks.json");
    std::fs::write(
        &jwks_path,
        jwks(&[
            ("r1", "rsa-private.pem", Algorithm::RS256),
            ("e1", "ec-private.pem", Algorithm::ES256),
        ]),
    )
    .unwrap();
    let (_r3, by_jwks) = start(&["--jwt-jwks", jwks_path.to_str().unwrap()]).await;
    let by_r1 = sign_pem(
        Algorithm::RS256,
        "rsa-private.pem",
        Some("r1"),
        claims.clone(),
    );
    Client::connect(&by_jwks.ws_url(&format!("token={by_r1}"))).await;
    let by_e1 = sign_pem(
        Algorithm::ES256,
        "ec-private.pem",
        Some("e1"),
        claims.clone(),
    );
    Client::connect(&by_jwks.ws_url(&format!("token={by_e1}"))).await;
    let unknown = sign_pem(Algorithm::ES256, "ec-private.pem", Some("nope"), claims);
    assert_eq!(
        refused_status(&by_jwks.ws_url(&format!("token={unknown}"))).await,
        401
    );
}

fn jwks(keys: &[(&str, &str, Algorithm)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, pem, alg)| {
            let pem = std::fs::read(format!("{KEYS}/{pem}")).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
                _ => EncodingKey::from_ec_pem(&pem).unwrap(),
            };
            let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, *alg).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            serde_json::to_value(jwk).unwrap()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_connection_with_4001() {
    let (_redis, gateway) = start(AUTH).await;
    let short = token("u42", &["user:42:*"], 2);
    let mut client = Client::connect(&gateway.ws_url(&format!("token={short}"))).await;
    let (code, reason) = client.expect_close(secs(6)).await;
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_extends_the_connection_and_narrows_its_channels() {
    let (_redis, gateway) = start(AUTH).await;
    let short = token("u42", &["user:42:*", "team:7"], 2);
    let mut client =
        Client::connect(&gateway.ws_url(&format!("token={short}&channels=team:7,user:42:a"))).await;

    // Another subject cannot take the connection over.
    let stranger = token("u99", &["*"], 60);
    let reply = client
        .request(json!({"op": "refresh", "id": 1, "token": stranger}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = client
        .request(json!({"op": "refresh", "id": 2, "token": "garbage"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");

    // The new token no longer grants team:7: it is dropped, and the reply says so.
    let longer = token("u42", &["user:42:*"], 60);
    let reply = client
        .request(json!({"op": "refresh", "id": 3, "token": longer}))
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");
    assert_eq!(reply["channels"], json!(["user:42:a"]));

    // Past the first token's exp the connection still works: nothing to await but time.
    tokio::time::sleep(secs(3)).await;
    client.ping(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allowlist_get_403() {
    let (_redis, gateway) = start(&["--allowed-origins", "https://app.example"]).await;
    let url = gateway.ws_url("");
    assert_eq!(
        connect_with(&url, &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    assert!(connect_with(&url, &[("origin", "https://app.example")])
        .await
        .is_ok());
    assert!(
        connect_with(&url, &[]).await.is_ok(),
        "non-browser clients send no Origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_per_instance_and_per_ip() {
    let (_redis, gateway) =
        start(&["--max-connections", "3", "--max-connections-per-ip", "2"]).await;
    let url = gateway.ws_url("");
    let _one = Client::connect(&url).await;
    let _two = Client::connect(&url).await;
    assert_eq!(refused_status(&url).await, 503, "third from 127.0.0.1");
    // X-Forwarded-For from an untrusted peer is ignored.
    assert_eq!(
        connect_with(&url, &[("x-forwarded-for", "203.0.113.9")])
            .await
            .err(),
        Some(503)
    );

    let (_redis2, behind_proxy) = start(&[
        "--max-connections",
        "3",
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.0/8",
    ])
    .await;
    let url = behind_proxy.ws_url("");
    let _a = connect_with(&url, &[("x-forwarded-for", "203.0.113.1")])
        .await
        .unwrap();
    assert_eq!(
        connect_with(&url, &[("x-forwarded-for", "203.0.113.1")])
            .await
            .err(),
        Some(503)
    );
    // A forged left-most entry does not help: the right-most untrusted one counts.
    assert_eq!(
        connect_with(&url, &[("x-forwarded-for", "198.51.100.1, 203.0.113.1")])
            .await
            .err(),
        Some(503)
    );
    let _b = connect_with(&url, &[("x-forwarded-for", "203.0.113.2")])
        .await
        .unwrap();
    let _c = connect_with(&url, &[("x-forwarded-for", "203.0.113.3")])
        .await
        .unwrap();
    assert_eq!(
        connect_with(&url, &[("x-forwarded-for", "203.0.113.4")])
            .await
            .err(),
        Some(503),
        "instance limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_will_not_send_its_handshake_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_redis, gateway) = start(&["--handshake-timeout", "500ms"]).await;

    let mut silent = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "silent client kept open: {read:?}"
    );

    // Headers dribbled one line at a time never complete the request.
    let mut dribbler = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    dribbler.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
    let dribble = async {
        for i in 0..50 {
            if dribbler
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
            // Any answer (an error status, EOF, a reset) ends the dribble; silence goes on.
            if tokio::time::timeout(millis(100), dribbler.read(&mut buf))
                .await
                .is_ok()
            {
                return true;
            }
        }
        false
    };
    assert!(dribble.await, "a dribbling client was kept for 5s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_floods_are_rate_limited_then_closed() {
    let (_redis, gateway) = start(&[
        "--rate-limit",
        "5",
        "--rate-burst",
        "5",
        "--rate-limit-strikes",
        "20",
    ])
    .await;
    let mut client = Client::connect(&gateway.ws_url("")).await;
    for id in 0..10 {
        client.send_json(json!({"op": "ping", "id": id})).await;
    }
    let mut limited = 0;
    for id in 0..10 {
        let reply = client.recv_json(secs(5)).await;
        // Refused or answered, each reply carries its request's id (the contract).
        assert_eq!(reply["id"], id, "{reply}");
        if reply["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 4,
        "10 requests against a burst of 5: only {limited} refused"
    );
    for id in 10..40 {
        if tokio::time::timeout(
            secs(1),
            client.ws.send_text_frame(json!({"op": "ping", "id": id})),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    let (code, reason) = client.expect_close(secs(5)).await;
    assert_eq!((code, reason.as_str()), (1008, "rate limit exceeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_may_name_only_so_many_channels() {
    let (_redis, gateway) = start(&["--max-channels-per-request", "3"]).await;
    assert_eq!(
        refused_status(&gateway.ws_url("channels=a,b,c,d")).await,
        400
    );
    let mut client = Client::connect(&gateway.ws_url("channels=a,b,c")).await;
    let reply = client
        .request(json!({"op": "subscribe", "id": 1, "channels": ["d", "e", "f", "g"]}))
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert_eq!(
        client.subscribe(2, &["d", "e", "f"]).await,
        ["a", "b", "c", "d", "e", "f"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_and_metrics() {
    let redis = crate::support::Redis::start().await;
    redis
        .raw(&["CONFIG", "SET", "requirepass", "redis-pass-XYZZY"])
        .await;
    let url = redis
        .url()
        .replace("redis://", "redis://:redis-pass-XYZZY@");
    // At the most verbose level: libraries' traces of frames and requests too.
    let gateway = crate::support::Gateway::start(&url, &[AUTH, &["--log", "trace"]].concat()).await;
    gateway.wait_ready(secs(10)).await;
    let good = token("u42", &["user:42:*"], 60);
    let mut client = Client::connect(&gateway.ws_url(&format!("token={good}"))).await;
    let _ = refused_status(&gateway.ws_url("token=bad-token-PLUGH")).await;
    let refreshed = token("u42", &["user:42:*"], 120);
    let reply = client
        .request(json!({"op": "refresh", "id": 1, "token": refreshed}))
        .await;
    assert_eq!(reply["op"], "ok", "{reply}");

    let (_, metrics) = gateway.get("/metrics").await;
    let logs = gateway.logs().join("\n");
    assert!(
        logs.contains("redis://"),
        "the start line shows the config: {logs}"
    );
    let secrets = [
        SECRET,
        "redis-pass-XYZZY",
        &good,
        "bad-token-PLUGH",
        &refreshed,
    ];
    for secret in secrets {
        assert!(!logs.contains(secret), "logs leak {secret:?}");
        assert!(!metrics.contains(secret), "metrics leak {secret:?}");
    }

    // --help shows each variable's value from the environment: never a secret's.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .env("HERALD_REDIS_URL", &url)
        .env("HERALD_JWT_SECRET", SECRET)
        .output()
        .expect("run herald --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("HERALD_REDIS_URL"), "{help}");
    for secret in [SECRET, "redis-pass-XYZZY"] {
        assert!(!help.contains(secret), "--help leaks {secret:?}:\n{help}");
    }
}

/// Sending a frame without waiting for the server: a flood does not read replies.
trait SendText {
    async fn send_text_frame(&mut self, value: Value);
}

impl SendText for crate::support::client::Ws {
    async fn send_text_frame(&mut self, value: Value) {
        use futures_util::SinkExt;
        let _ = self.send(Message::Text(value.to_string().into())).await;
    }
}

/// Connects after writing `header` (a PROXY protocol line) on the raw socket; `Err` holds
/// the HTTP refusal, or 0 when the server dropped the connection without answering.
async fn connect_proxied(gateway: &crate::support::Gateway, header: &str) -> Result<Client, u16> {
    use tokio::io::AsyncWriteExt;
    // The "proxy" connects from 127.0.0.2, the one trusted address; the fixtures' own
    // probes come from 127.0.0.1 and stay direct.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(gateway.addr()).await.unwrap();
    stream.write_all(header.as_bytes()).await.unwrap();
    let request = gateway.ws_url("").into_client_request().unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    match tokio::time::timeout(secs(5), tokio_tungstenite::client_async(request, stream)).await {
        Ok(Ok((ws, _))) => {
            let mut client = Client {
                ws,
                welcome: Value::Null,
            };
            client.welcome = client.expect_op("welcome", secs(5)).await;
            Ok(client)
        }
        Ok(Err(tungstenite::Error::Http(response))) => Err(response.status().as_u16()),
        Ok(Err(_)) => Err(0),
        Err(_) => panic!("no answer within 5s after {header:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_trusted_proxies_names_the_client() {
    let (_redis, gateway) = start(&[
        "--proxy-protocol",
        "--trusted-proxies",
        "127.0.0.2",
        "--max-connections-per-ip",
        "1",
        "--handshake-timeout",
        "1s",
    ])
    .await;
    let first = "PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n";
    let _one = connect_proxied(&gateway, first)
        .await
        .expect("first client");
    let same = "PROXY TCP4 203.0.113.7 127.0.0.1 40001 8080\r\n";
    assert_eq!(
        connect_proxied(&gateway, same).await.err(),
        Some(503),
        "per-IP limit by PROXY source"
    );
    let other = "PROXY TCP4 203.0.113.8 127.0.0.1 40002 8080\r\n";
    assert!(
        connect_proxied(&gateway, other).await.is_ok(),
        "another client IP"
    );
    // A trusted proxy that sends no header is dropped without an answer.
    assert_eq!(connect_proxied(&gateway, "").await.err(), Some(0));
}
