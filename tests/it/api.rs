//! The server API (contract 1.1, "The server API"): publish over HTTP, channel counts on
//! one instance and across the cluster, disconnect a user everywhere, and every refusal
//! with its status and a JSON reason. Real redis-server, several real `herald` instances on
//! it, real HTTP and WebSocket clients.
//!
//! Exactness is checked by sentinels, not by silence: each client reads exactly what was
//! published, then a last publication per channel, which must be the next frame on that
//! channel (a duplicate would come before it, publications on one channel being ordered).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::access::{token, SECRET};
use crate::history::Offset;
use crate::support::metrics::Scrape;
use crate::support::{eventually, http, millis, secs, Client, Gateway, Redis};

/// The API key of these tests: distinctive, so a leak into the logs is found by search.
pub const KEY: &str = "api-key-PLUGH-3f9c1e7a0d";

/// The metric family, and every value its `endpoint` label may take (bounded labels).
const REQUESTS: &str = "herald_api_requests_total";
const ENDPOINTS: [&str; 5] = ["publish", "channels", "channel", "disconnect", "other"];

// ---------------------------------------------------------------------------------------
// Publish
// ---------------------------------------------------------------------------------------

/// Two instances on one Redis, two subscribers on each. Publications over HTTP through
/// either instance, to a plain channel and to a history channel, reach all four subscribers
/// once, in order, with `data` exactly as sent; on the history channel each carries the
/// offset the API answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_http_reaches_every_subscriber_on_every_instance_once() {
    let redis = Redis::start().await;
    let args = ["--api-key", KEY, "--history", "hist:*=100/5m"];
    let gws = [
        Gateway::start(&redis.url(), &args).await,
        Gateway::start(&redis.url(), &args).await,
    ];
    let mut clients = Vec::new();
    for gw in &gws {
        gw.wait_ready(secs(10)).await;
        for _ in 0..2 {
            clients.push(Client::connect(&gw.ws_url("channels=plain,hist:a")).await);
        }
    }
    wait_numsub(&redis, &["plain", "hist:a"], 2).await;

    // Strings that are themselves JSON text must stay strings: `data` is published as its
    // JSON text, never unwrapped.
    let plain_data = [
        json!({
            "user": {"id": 7, "tags": ["a", "b"], "deep": {"none": null, "yes": true}},
            "note": "é \"quoted\" \\ \u{1F600} \n tab\t",
        }),
        json!("a plain string"),
        json!("{\"looks\":\"like an object\"}"),
        json!("17"),
        json!(42),
        json!(-12.5),
        json!([1, "two", {"three": [3]}]),
    ];
    let mut published = [0.0; 2];
    let mut plain_expected = Vec::new();
    for (i, data) in plain_data.iter().enumerate() {
        let via = i % 2;
        let answer = publish(&gws[via], "plain", data.clone()).await;
        assert_eq!(answer, json!({}), "publish {data} on a plain channel");
        published[via] += 1.0;
        plain_expected.push(json!({"op": "message", "channel": "plain", "data": data}));
    }

    let mut hist_expected = Vec::new();
    let mut offsets = Vec::new();
    for (via, data) in [
        (1, json!({"kept": 1, "list": [{"a": null}]})),
        (0, json!("kept two")),
    ] {
        let offset = publish_kept(&gws[via], "hist:a", data.clone()).await;
        published[via] += 1.0;
        hist_expected.push(
            json!({"op": "message", "channel": "hist:a", "data": data, "offset": offset.text}),
        );
        offsets.push(offset);
    }
    assert_eq!(
        (&offsets[1].epoch, offsets[1].n),
        (&offsets[0].epoch, offsets[0].n + 1),
        "offsets answered by two instances on one channel: {offsets:?}"
    );

    // The sentinels, one per channel, each through the other instance than the last.
    assert_eq!(publish(&gws[1], "plain", json!("end")).await, json!({}));
    published[1] += 1.0;
    plain_expected.push(json!({"op": "message", "channel": "plain", "data": "end"}));
    let last = publish_kept(&gws[0], "hist:a", json!("end")).await;
    published[0] += 1.0;
    hist_expected
        .push(json!({"op": "message", "channel": "hist:a", "data": "end", "offset": last.text}));

    for (i, client) in clients.iter_mut().enumerate() {
        let who = format!("client {} on instance {}", i % 2, i / 2);
        let got = read_messages(client, plain_expected.len() + hist_expected.len(), &who).await;
        assert_eq!(
            got.get("plain"),
            Some(&plain_expected),
            "{who}: the plain channel"
        );
        assert_eq!(
            got.get("hist:a"),
            Some(&hist_expected),
            "{who}: the history channel"
        );
        client.ping(1).await;
    }

    for (i, gw) in gws.iter().enumerate() {
        let scrape = gw.metrics().await;
        assert_eq!(
            requests(&scrape, "publish", 200),
            published[i],
            "instance {i}: {REQUESTS}{{endpoint=\"publish\",code=\"200\"}}\n{}",
            scrape.text
        );
    }
}

// ---------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------

/// One request the API must refuse.
struct Refused {
    what: &'static str,
    method: &'static str,
    path: String,
    /// The whole `Authorization` header; `None` sends none.
    authorization: Option<String>,
    body: Option<Vec<u8>>,
    status: u16,
    /// The `endpoint` label it must be counted under; `None` where the contract leaves it
    /// open (a wrong method or an unknown path: the path's endpoint or `other`), and such
    /// refusals are checked by their total per code.
    endpoint: Option<&'static str>,
}

/// Every refusal in the contract answers its status with `{"error":"<reason>"}`, none
/// leaks the key into the logs or panics, and `herald_api_requests_total` counts them,
/// with bounded labels. Each refusal has a control that is accepted: the same path with
/// the right key and a valid body, a body at exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_their_status_and_a_json_reason() {
    const MAX_BODY: usize = 1000;
    let redis = Redis::start().await;
    // At the most verbose level: no library's trace of a request may show the key either.
    let max_body = MAX_BODY.to_string();
    let gw = Gateway::start(
        &redis.url(),
        &[
            "--api-key",
            KEY,
            "--api-max-body",
            &max_body,
            "--log",
            "trace",
        ],
    )
    .await;
    let off = Gateway::start(&redis.url(), &[]).await;
    gw.wait_ready(secs(10)).await;
    off.wait_ready(secs(10)).await;

    // The controls: what every refusal below differs from in one thing only.
    let mut accepted = BTreeMap::new();
    let mut count = |endpoint: &'static str| *accepted.entry(endpoint).or_insert(0.0) += 1.0;
    assert_eq!(publish(&gw, "news", json!({"x": 1})).await, json!({}));
    count("publish");
    let at_limit = publish_body_of(MAX_BODY);
    assert_eq!(
        call(&gw, "POST", "/api/publish", Some(KEY), Some(at_limit)).await,
        (200, "{}".to_owned()),
        "a body of exactly --api-max-body bytes"
    );
    count("publish");
    assert_eq!(
        api(&gw, "GET", "/api/channels", None).await,
        json!({"channels": []})
    );
    count("channels");
    assert_eq!(
        api(&gw, "GET", "/api/channel?name=news", None).await,
        json!({"channel": "news", "subscribers": 0})
    );
    count("channel");
    assert_eq!(
        api(
            &gw,
            "POST",
            "/api/disconnect",
            Some(json!({"user": "nobody"}))
        )
        .await,
        json!({})
    );
    count("disconnect");

    let bearer = |key: &str| Some(format!("Bearer {key}"));
    let wrong_key = "api-key-PLUGH-3f9c1e7a0e"; // the last character differs
    let key_prefix = &KEY[..KEY.len() - 1];
    let valid = || Some(br#"{"channel":"news","data":1}"#.to_vec());
    let body = |text: &str| Some(text.as_bytes().to_vec());
    let mut cases = Vec::new();
    let mut case = |what, method, path: &str, authorization, body, status, endpoint| {
        cases.push(Refused {
            what,
            method,
            path: path.to_owned(),
            authorization,
            body,
            status,
            endpoint,
        })
    };

    // 401
    let publish_401 = [
        ("no Authorization header", None),
        ("a wrong key", bearer(wrong_key)),
        ("the key without its last byte", bearer(key_prefix)),
        ("the key and one byte more", bearer(&format!("{KEY}x"))),
        ("the key without the Bearer scheme", Some(KEY.to_owned())),
        (
            "the key under the Basic scheme",
            Some(format!("Basic {KEY}")),
        ),
        ("Bearer and nothing", Some("Bearer ".to_owned())),
    ];
    for (what, authorization) in publish_401 {
        case(
            what,
            "POST",
            "/api/publish",
            authorization,
            valid(),
            401,
            Some("publish"),
        );
    }
    case(
        "channels without a key",
        "GET",
        "/api/channels",
        None,
        None,
        401,
        Some("channels"),
    );
    case(
        "cluster channels with a wrong key",
        "GET",
        "/api/channels?scope=cluster",
        bearer(wrong_key),
        None,
        401,
        Some("channels"),
    );
    case(
        "channel without a key",
        "GET",
        "/api/channel?name=news",
        None,
        None,
        401,
        Some("channel"),
    );
    case(
        "disconnect with a wrong key",
        "POST",
        "/api/disconnect",
        bearer(wrong_key),
        body(r#"{"user":"nobody"}"#),
        401,
        Some("disconnect"),
    );

    // 400 on publish: the body
    let long_name = "a".repeat(256);
    let publish_400 = [
        ("malformed JSON", body(r#"{"channel":"news","data":"#)),
        ("not JSON at all", body("channel=news&data=1")),
        ("an empty body", body("")),
        ("no channel", body(r#"{"data":1}"#)),
        ("no data", body(r#"{"channel":"news"}"#)),
        (
            "a channel that is a number",
            body(r#"{"channel":5,"data":1}"#),
        ),
        (
            "a channel that is null",
            body(r#"{"channel":null,"data":1}"#),
        ),
        ("an empty channel name", body(r#"{"channel":"","data":1}"#)),
        (
            "a space in the name",
            body(r#"{"channel":"bad name","data":1}"#),
        ),
        (
            "a ; in the name",
            body(r#"{"channel":"bad;name","data":1}"#),
        ),
        ("a non-ASCII name", body(r#"{"channel":"café","data":1}"#)),
        (
            "a 256-byte name",
            Some(
                json!({"channel": long_name, "data": 1})
                    .to_string()
                    .into_bytes(),
            ),
        ),
        ("an array body", body(r#"[{"channel":"news","data":1}]"#)),
        ("a string body", body(r#""news""#)),
        ("a number body", body("42")),
        ("a null body", body("null")),
    ];
    for (what, body) in publish_400 {
        case(
            what,
            "POST",
            "/api/publish",
            bearer(KEY),
            body,
            400,
            Some("publish"),
        );
    }
    // 400 on the others
    for (what, path) in [
        ("channel without name", "/api/channel".to_owned()),
        (
            "channel with an empty name",
            "/api/channel?name=".to_owned(),
        ),
        (
            "channel with an invalid name",
            "/api/channel?name=bad%20name".to_owned(),
        ),
        (
            "channel with a 256-byte name",
            format!("/api/channel?name={long_name}"),
        ),
    ] {
        case(what, "GET", &path, bearer(KEY), None, 400, Some("channel"));
    }
    for (what, disconnect) in [
        ("disconnect without user", body("{}")),
        ("disconnect with a numeric user", body(r#"{"user":5}"#)),
        ("disconnect with malformed JSON", body(r#"{"user":"#)),
        ("disconnect with an array body", body(r#"["alice"]"#)),
    ] {
        case(
            what,
            "POST",
            "/api/disconnect",
            bearer(KEY),
            disconnect,
            400,
            Some("disconnect"),
        );
    }

    // 413: above the limit by one byte, and by double
    for (what, size) in [
        ("a body one byte above the limit", MAX_BODY + 1),
        ("a body of twice the limit", 2 * MAX_BODY),
    ] {
        case(
            what,
            "POST",
            "/api/publish",
            bearer(KEY),
            Some(publish_body_of(size)),
            413,
            Some("publish"),
        );
    }
    let mut oversized_disconnect = br#"{"user":""#.to_vec();
    oversized_disconnect.resize(2 * MAX_BODY - 2, b'u');
    oversized_disconnect.extend(br#""}"#);
    case(
        "a disconnect body of twice the limit",
        "POST",
        "/api/disconnect",
        bearer(KEY),
        Some(oversized_disconnect),
        413,
        Some("disconnect"),
    );

    // 405, with the right key
    for (method, path) in [
        ("GET", "/api/publish"),
        ("PUT", "/api/publish"),
        ("DELETE", "/api/publish"),
        ("GET", "/api/disconnect"),
        ("POST", "/api/channels"),
        ("DELETE", "/api/channels"),
        ("POST", "/api/channel?name=news"),
    ] {
        case(
            "a wrong method",
            method,
            path,
            bearer(KEY),
            valid(),
            405,
            None,
        );
    }
    // 404, with the right key: unknown /api/ paths
    for (method, path) in [
        ("GET", "/api/nope"),
        ("POST", "/api/nope"),
        ("GET", "/api/"),
        ("POST", "/api/publish/more"),
    ] {
        case(
            "an unknown /api/ path",
            method,
            path,
            bearer(KEY),
            valid(),
            404,
            None,
        );
    }

    let mut counted: BTreeMap<(&str, u16), f64> = BTreeMap::new();
    let mut per_code: BTreeMap<u16, f64> = BTreeMap::new();
    for endpoint in accepted.keys() {
        counted.insert((*endpoint, 200), accepted[endpoint]);
    }
    *per_code.entry(200).or_default() += accepted.values().sum::<f64>();
    for c in &cases {
        let answer = call_raw(
            &gw,
            c.method,
            &c.path,
            c.authorization.as_deref(),
            c.body.clone(),
        )
        .await;
        let what = format!("{} ({} {})", c.what, c.method, c.path);
        assert_refusal(&what, answer, c.status);
        if let Some(endpoint) = c.endpoint {
            *counted.entry((endpoint, c.status)).or_default() += 1.0;
        }
        *per_code.entry(c.status).or_default() += 1.0;
    }

    // The limit holds for a body that does not announce its size.
    assert_eq!(
        chunked_post_status(&gw, "/api/publish", &publish_body_of(2 * MAX_BODY)).await,
        413,
        "a chunked body of twice the limit"
    );
    *counted.entry(("publish", 413)).or_default() += 1.0;
    *per_code.entry(413).or_default() += 1.0;

    // The API disabled: every /api/ path answers 404, whatever the method and the key.
    for (method, path) in [
        ("POST", "/api/publish"),
        ("GET", "/api/channels"),
        ("GET", "/api/channels?scope=cluster"),
        ("GET", "/api/channel?name=news"),
        ("POST", "/api/disconnect"),
        ("GET", "/api/publish"),
        ("GET", "/api/nope"),
    ] {
        for key in [None, Some(KEY)] {
            let answer = call(&off, method, path, key, valid()).await;
            let what = format!("API disabled: {method} {path} with key {key:?}");
            assert_refusal(&what, answer, 404);
        }
    }
    assert_eq!(off.get("/healthz").await.0, 200, "the rest still answers");

    let scrape = gw.metrics().await;
    for ((endpoint, code), expected) in &counted {
        assert_eq!(
            requests(&scrape, endpoint, *code),
            *expected,
            "{REQUESTS}{{endpoint=\"{endpoint}\",code=\"{code}\"}}\n{}",
            scrape.text
        );
    }
    let mut seen_per_code: BTreeMap<u16, f64> = BTreeMap::new();
    for sample in scrape.samples.iter().filter(|s| s.name == REQUESTS) {
        let endpoint = sample.labels.get("endpoint").map(String::as_str);
        assert!(
            endpoint.is_some_and(|e| ENDPOINTS.contains(&e)),
            "an endpoint label outside {ENDPOINTS:?}: {sample:?}"
        );
        let code: u16 = sample.labels["code"]
            .parse()
            .unwrap_or_else(|e| panic!("code label not a number ({e}): {sample:?}"));
        *seen_per_code.entry(code).or_default() += sample.value;
    }
    assert_eq!(
        seen_per_code, per_code,
        "{REQUESTS} summed per code\n{}",
        scrape.text
    );

    for (name, g) in [
        ("the API instance", &gw),
        ("the instance without API", &off),
    ] {
        let logs = g.logs().join("\n");
        for secret in [key_prefix, wrong_key] {
            assert!(!logs.contains(secret), "{name}'s log leaks {secret:?}");
        }
        assert!(!logs.contains("panicked"), "{name} panicked:\n{logs}");
    }
    assert!(!scrape.text.contains(key_prefix), "/metrics leaks the key");
}

// ---------------------------------------------------------------------------------------
// Channel counts
// ---------------------------------------------------------------------------------------

/// Three instances, clients spread over them. Local counts are exact on each instance as
/// soon as the subscriptions are acknowledged; cluster counts are exact on every instance
/// within a few presence intervals; an unsubscribe is seen cluster-wide; and after one
/// instance is SIGKILLed (it says goodbye to no one) its clients stop counting within a
/// few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_counts_are_exact_locally_and_across_the_cluster() {
    let redis = Redis::start().await;
    let args = ["--api-key", KEY, "--presence-interval", "300ms"];
    let mut gws = Vec::new();
    for _ in 0..3 {
        gws.push(Gateway::start(&redis.url(), &args).await);
    }
    for gw in &gws {
        gw.wait_ready(secs(10)).await;
    }
    // a: 2 + 1 + 0, b: 0 + 3 + 1, c: 0 + 1 + 0; one client of instance 1 holds a and b.
    let placement = [
        (0, "a"),
        (0, "a"),
        (1, "a,b"),
        (1, "b"),
        (1, "b"),
        (1, "c"),
        (2, "b"),
    ];
    let mut clients = Vec::new();
    for (instance, channels) in placement {
        let url = gws[instance].ws_url(&format!("channels={channels}"));
        clients.push(Client::connect(&url).await);
    }
    let local = [
        counts(&[("a", 2)]),
        counts(&[("a", 1), ("b", 3), ("c", 1)]),
        counts(&[("b", 1)]),
    ];
    for (i, gw) in gws.iter().enumerate() {
        assert_local_counts(gw, &format!("instance {i}"), &local[i]).await;
    }
    let took = wait_cluster_counts(
        &gws.iter().collect::<Vec<_>>(),
        &counts(&[("a", 3), ("b", 4), ("c", 1)]),
    )
    .await;
    eprintln!("api: cluster counts exact on all 3 instances after {took:?}");

    // One of instance 0's two clients leaves `a`: at once locally, then everywhere.
    assert!(clients[0].unsubscribe(1, &["a"]).await.is_empty());
    assert_local_counts(
        &gws[0],
        "instance 0 after an unsubscribe",
        &counts(&[("a", 1)]),
    )
    .await;
    wait_cluster_counts(
        &gws.iter().collect::<Vec<_>>(),
        &counts(&[("a", 2), ("b", 4), ("c", 1)]),
    )
    .await;

    // Instance 1 dies without a word: its a 1, b 3 and c 1 stop counting.
    gws[1].kill9();
    let killed = Instant::now();
    let survivors = [&gws[0], &gws[2]];
    let took = wait_cluster_counts(&survivors, &counts(&[("a", 1), ("b", 1)])).await;
    eprintln!(
        "api: cluster counts dropped the SIGKILLed instance {:?} after the kill (presence \
         interval 300ms; exact on both survivors within {took:?} of polling)",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < secs(5),
        "a dead instance must stop counting within a few seconds"
    );
    assert_local_counts(&gws[0], "instance 0 after the kill", &counts(&[("a", 1)])).await;
    assert_local_counts(&gws[2], "instance 2 after the kill", &counts(&[("b", 1)])).await;
}

// ---------------------------------------------------------------------------------------
// Disconnect
// ---------------------------------------------------------------------------------------

/// alice has connections on two instances (by `?token=` and by Authorization header, two
/// on one instance), bob one on each. A disconnect of a user without connections closes
/// nothing; a disconnect of alice, asked of one instance, closes all three of hers with
/// 4003 `disconnected` within a second, and bob's still receive publications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_a_user_on_every_instance_and_no_one_else() {
    let redis = Redis::start().await;
    let args = ["--api-key", KEY, "--jwt-secret", SECRET];
    let gws = [
        Gateway::start(&redis.url(), &args).await,
        Gateway::start(&redis.url(), &args).await,
    ];
    for gw in &gws {
        gw.wait_ready(secs(10)).await;
    }
    let alice = token("alice", &["room"], 300);
    let bob = token("bob", &["room"], 300);
    let mut alices = [
        Client::connect(&gws[0].ws_url(&format!("token={alice}&channels=room"))).await,
        connect_bearer(&gws[1].ws_url("channels=room"), &alice).await,
        Client::connect(&gws[1].ws_url(&format!("token={alice}&channels=room"))).await,
    ];
    let mut bobs = [
        Client::connect(&gws[0].ws_url(&format!("token={bob}&channels=room"))).await,
        connect_bearer(&gws[1].ws_url("channels=room"), &bob).await,
    ];
    wait_numsub(&redis, &["room"], 2).await;

    // Control: a user with no connection anywhere. Nobody is closed: the publication after
    // it (ordered after it through Redis) reaches all five.
    assert_eq!(
        api(
            &gws[1],
            "POST",
            "/api/disconnect",
            Some(json!({"user": "nobody"}))
        )
        .await,
        json!({})
    );
    assert_eq!(publish(&gws[0], "room", json!({"n": 1})).await, json!({}));
    for (i, c) in alices.iter_mut().chain(bobs.iter_mut()).enumerate() {
        let frame = c.expect_message("room", secs(5)).await;
        assert_eq!(frame["data"], json!({"n": 1}), "connection {i}: {frame}");
    }

    let asked = Instant::now();
    assert_eq!(
        api(
            &gws[0],
            "POST",
            "/api/disconnect",
            Some(json!({"user": "alice"}))
        )
        .await,
        json!({})
    );
    let answered = Instant::now();
    // "Within a second" of the request; 250ms more for this test's own scheduling on a
    // busy machine (the clients are read concurrently, each from the same start).
    let within = secs(1) + millis(250);
    let closes = join_all(alices.iter_mut().map(|c| async move {
        let close = c
            .expect_close(within.saturating_sub(answered.elapsed()))
            .await;
        (close, asked.elapsed())
    }))
    .await;
    for (i, (close, after)) in closes.iter().enumerate() {
        assert_eq!(
            close,
            &(4003, "disconnected".to_owned()),
            "alice's connection {i}"
        );
        eprintln!(
            "api: alice's connection {i} closed (handshake done) {after:?} after the request"
        );
    }

    assert_eq!(publish(&gws[1], "room", json!({"n": 2})).await, json!({}));
    for (i, c) in bobs.iter_mut().enumerate() {
        let frame = c.expect_message("room", secs(5)).await;
        assert_eq!(
            frame["data"],
            json!({"n": 2}),
            "bob's connection {i}: {frame}"
        );
        c.ping(7).await;
    }
    for (i, gw) in gws.iter().enumerate() {
        let scrape = gw.metrics().await;
        assert_eq!(
            requests(&scrape, "disconnect", 200),
            1.0,
            "instance {i}\n{}",
            scrape.text
        );
    }
}

// ---------------------------------------------------------------------------------------
// History in /api/channel
// ---------------------------------------------------------------------------------------

/// `GET /api/channel` on a history channel tells how many publications are kept and the
/// newest offset: after 3 publications, size 3 and the third's offset; on a channel that
/// keeps 2, size 2; a publication through `FCALL herald_publish` counts the same; a plain
/// channel has no `history`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_shows_the_history_kept() {
    let redis = Redis::start().await;
    let gw = Gateway::start(
        &redis.url(),
        &["--api-key", KEY, "--history", "hist:*=100/5m,short:*=2/5m"],
    )
    .await;
    gw.wait_ready(secs(10)).await;

    let mut kept = Vec::new();
    let mut short = Vec::new();
    for seq in 1..=3 {
        kept.push(publish_kept(&gw, "hist:c", json!({"seq": seq})).await);
        short.push(publish_kept(&gw, "short:c", json!({"seq": seq})).await);
    }
    for offsets in [&kept, &short] {
        assert_eq!(
            (&offsets[2].epoch, offsets[2].n),
            (&offsets[0].epoch, offsets[0].n + 2),
            "three publications on one channel: {offsets:?}"
        );
    }
    for scope in ["", "&scope=cluster"] {
        assert_eq!(
            api(
                &gw,
                "GET",
                &format!("/api/channel?name=hist:c{scope}"),
                None
            )
            .await,
            json!({
                "channel": "hist:c",
                "subscribers": 0,
                "history": {"size": 3, "offset": kept[2].text},
            }),
            "scope {scope:?}"
        );
        assert_eq!(
            api(
                &gw,
                "GET",
                &format!("/api/channel?name=short:c{scope}"),
                None
            )
            .await,
            json!({
                "channel": "short:c",
                "subscribers": 0,
                "history": {"size": 2, "offset": short[2].text},
            }),
            "a channel that keeps 2, scope {scope:?}"
        );
    }
    assert_eq!(publish(&gw, "plain", json!(1)).await, json!({}));
    assert_eq!(
        api(&gw, "GET", "/api/channel?name=plain", None).await,
        json!({"channel": "plain", "subscribers": 0}),
        "a channel without history"
    );

    // A subscriber, and a fourth publication from Redis through the same function.
    let mut client = Client::connect(&gw.ws_url("channels=hist:c")).await;
    crate::delivery::wait_channels(&redis, &["hist:c"], secs(5)).await;
    let fourth = redis
        .herald_publish("hist:c", r#"{"seq":4}"#)
        .await
        .expect("herald_publish on a history channel answers an offset");
    let frame = client.expect_message("hist:c", secs(5)).await;
    assert_eq!(frame["offset"], json!(fourth), "{frame}");
    assert_eq!(
        Offset::parse(&fourth).n,
        kept[2].n + 1,
        "FCALL after the API: {fourth}"
    );
    assert_eq!(
        api(&gw, "GET", "/api/channel?name=hist:c", None).await,
        json!({
            "channel": "hist:c",
            "subscribers": 1,
            "history": {"size": 4, "offset": fourth},
        })
    );
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A request with `Authorization: Bearer <key>` when `key` is given.
async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let authorization = key.map(|k| format!("Bearer {k}"));
    call_raw(gw, method, path, authorization.as_deref(), body).await
}

/// A request with this exact `Authorization` header (none when `None`), and a JSON
/// content type when there is a body.
async fn call_raw(
    gw: &Gateway,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let mut headers = Vec::new();
    if let Some(authorization) = authorization {
        headers.push(("authorization", authorization));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    http::request(method, &gw.http_url(path), &headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
}

/// A request with the right key that must answer 200 with a JSON object; returns it.
pub async fn api(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string().into_bytes());
    let (status, text) = call(gw, method, path, Some(KEY), body).await;
    assert_eq!(status, 200, "{method} {path}: {text}");
    let answer: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: the answer is not JSON ({e}): {text}"));
    assert!(answer.is_object(), "{method} {path}: not an object: {text}");
    answer
}

pub async fn publish(gw: &Gateway, channel: &str, data: Value) -> Value {
    let body = json!({"channel": channel, "data": data});
    api(gw, "POST", "/api/publish", Some(body)).await
}

/// Publishes on a history channel: the answer must be exactly `{"offset": "<offset>"}`.
pub async fn publish_kept(gw: &Gateway, channel: &str, data: Value) -> Offset {
    let answer = publish(gw, channel, data).await;
    match answer.as_object().map(|o| (o.len(), o.get("offset"))) {
        Some((1, Some(Value::String(offset)))) => Offset::parse(offset),
        _ => panic!(
            "publish on history channel {channel:?}: expected {{\"offset\":…}}, got {answer}"
        ),
    }
}

/// The answer must be `status` with a body `{"error": "<reason>"}`; returns the reason.
fn assert_refusal(what: &str, (status, body): (u16, String), expected: u16) -> String {
    assert_eq!(status, expected, "{what}: answered {status} {body}");
    let value: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("{what}: {status} with a body that is not JSON ({e}): {body:?}")
    });
    match value.get("error") {
        Some(Value::String(reason)) if value.is_object() && !reason.is_empty() => reason.clone(),
        _ => panic!("{what}: {status} without {{\"error\":\"<reason>\"}}: {body}"),
    }
}

/// `{"channel":"news","data":"xxx…"}` of exactly `size` bytes.
fn publish_body_of(size: usize) -> Vec<u8> {
    let mut body = br#"{"channel":"news","data":""#.to_vec();
    body.resize(size - 2, b'x');
    body.extend(br#""}"#);
    assert_eq!(body.len(), size);
    body
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length) and the right key
/// over a plain socket; returns the answer's status.
async fn chunked_post_status(gw: &Gateway, path: &str, body: &[u8]) -> u16 {
    let exchange = async {
        let mut stream = TcpStream::connect(gw.addr()).await.expect("TCP connect");
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n{:x}\r\n",
            gw.addr(),
            body.len()
        )
        .into_bytes();
        request.extend(body);
        request.extend(b"\r\n0\r\n\r\n");
        stream.write_all(&request).await.expect("send the request");
        // The status line is all we need; the server may close (even reset) after it.
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend(&buf[..n]),
            }
        }
        answer
    };
    let answer = tokio::time::timeout(secs(5), exchange)
        .await
        .expect("an answer to the chunked POST within 5s");
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("chunked POST {path}: no status line in {text:?}"))
}

/// `herald_api_requests_total{endpoint,code}`; a sample never created is 0.
fn requests(scrape: &Scrape, endpoint: &str, code: u16) -> f64 {
    let code = code.to_string();
    scrape
        .try_value(REQUESTS, &[("endpoint", endpoint), ("code", &code)])
        .unwrap_or(0.0)
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

/// `GET /api/channels[?scope=cluster]` as channel -> subscribers; a channel listed twice,
/// or an entry of another shape, fails.
pub async fn list_channels(gw: &Gateway, cluster: bool) -> BTreeMap<String, u64> {
    let path = if cluster {
        "/api/channels?scope=cluster"
    } else {
        "/api/channels"
    };
    let answer = api(gw, "GET", path, None).await;
    let entries = answer["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("GET {path}: no channels array: {answer}"));
    let mut listed = BTreeMap::new();
    for entry in entries {
        let (Some(channel), Some(n)) = (entry["channel"].as_str(), entry["subscribers"].as_u64())
        else {
            panic!("GET {path}: an entry without channel and subscribers: {entry}")
        };
        let twice = listed.insert(channel.to_owned(), n).is_some();
        assert!(!twice, "GET {path}: {channel:?} listed twice: {answer}");
    }
    listed
}

/// `GET /api/channel?name=<channel>[&scope=cluster]`: its `subscribers`.
pub async fn channel_subscribers(gw: &Gateway, channel: &str, cluster: bool) -> u64 {
    let scope = if cluster { "&scope=cluster" } else { "" };
    let path = format!("/api/channel?name={channel}{scope}");
    let answer = api(gw, "GET", &path, None).await;
    assert_eq!(answer["channel"], channel, "GET {path}: {answer}");
    answer["subscribers"]
        .as_u64()
        .unwrap_or_else(|| panic!("GET {path}: no subscribers count: {answer}"))
}

/// Channels every count test asks about, listed or not: "nobody" never has subscribers.
const ASKED: [&str; 4] = ["a", "b", "c", "nobody"];

/// Both local views of one instance equal `expected` (absent channels count 0).
async fn assert_local_counts(gw: &Gateway, who: &str, expected: &BTreeMap<String, u64>) {
    assert_eq!(
        &list_channels(gw, false).await,
        expected,
        "{who}: GET /api/channels"
    );
    for channel in ASKED {
        assert_eq!(
            channel_subscribers(gw, channel, false).await,
            expected.get(channel).copied().unwrap_or(0),
            "{who}: GET /api/channel?name={channel}"
        );
    }
}

/// Waits until both cluster views equal `expected` on every one of `gws`; returns how
/// long that took.
async fn wait_cluster_counts(gws: &[&Gateway], expected: &BTreeMap<String, u64>) -> Duration {
    let start = Instant::now();
    let what = format!("cluster counts {expected:?} on all {} instances", gws.len());
    eventually(&what, secs(5), async || {
        for (i, gw) in gws.iter().enumerate() {
            let listed = list_channels(gw, true).await;
            if &listed != expected {
                return Err(format!(
                    "instance {i}: /api/channels?scope=cluster {listed:?}"
                ));
            }
            for channel in ASKED {
                let n = channel_subscribers(gw, channel, true).await;
                if n != expected.get(channel).copied().unwrap_or(0) {
                    return Err(format!("instance {i}: {channel} {n} in /api/channel"));
                }
            }
        }
        Ok(())
    })
    .await;
    start.elapsed()
}

/// Waits until Redis delivers each of `channels` to `instances` subscriber connections
/// (PUBSUB NUMSUB), so that every instance receives what is published next.
async fn wait_numsub(redis: &Redis, channels: &[&str], instances: i64) {
    let what = format!("PUBSUB NUMSUB {channels:?} == {instances} each");
    eventually(&what, secs(5), async || {
        let mut args = vec!["PUBSUB", "NUMSUB"];
        args.extend(channels);
        let seen = match redis.raw(&args).await {
            redis::Value::Array(items) => items
                .chunks(2)
                .map(|pair| match pair {
                    [_, redis::Value::Int(n)] => *n,
                    other => panic!("PUBSUB NUMSUB pair {other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!("PUBSUB NUMSUB reply {other:?}"),
        };
        if seen.iter().all(|n| *n == instances) {
            Ok(())
        } else {
            Err(seen)
        }
    })
    .await;
}

/// Reads `n` frames, each a `message`, grouped by channel in order of arrival.
async fn read_messages(client: &mut Client, n: usize, who: &str) -> BTreeMap<String, Vec<Value>> {
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for i in 0..n {
        let frame = client.recv_json(secs(5)).await;
        let channel = match (&frame["op"], frame["channel"].as_str()) {
            (op, Some(channel)) if op == "message" => channel.to_owned(),
            _ => panic!("{who}: frame {i} of {n} is not a message: {frame}; before it: {got:?}"),
        };
        got.entry(channel).or_default().push(frame);
    }
    got
}

/// Connects with `Authorization: Bearer <jwt>` instead of `?token=`.
async fn connect_bearer(url: &str, jwt: &str) -> Client {
    let mut request = url.into_client_request().expect("a ws request");
    let value = HeaderValue::from_str(&format!("Bearer {jwt}")).expect("a header value");
    request.headers_mut().insert("authorization", value);
    let (ws, _) = tokio::time::timeout(secs(10), tokio_tungstenite::connect_async(request))
        .await
        .unwrap_or_else(|_| panic!("connect to {url} timed out"))
        .unwrap_or_else(|e| panic!("connect to {url} with a bearer token: {e}"));
    let mut client = Client {
        ws,
        welcome: Value::Null,
    };
    client.welcome = client.expect_op("welcome", secs(5)).await;
    client
}
