//! `CLUSTER SHARDS` (Redis 7.0+) read into masters and their slot ranges.
//!
//! The reply is an array of shards, each `slots` (flat start/end pairs) and `nodes` (each
//! node's fields); RESP2 spells every map as a flat array of key/value pairs, RESP3 as a
//! map: both are read through `pairs`. Measured on Redis 7.0.15: after a failover the dead
//! master stays listed as a shard of its own, `role master`, `health fail`, no slots
//! (tests/fixtures/cluster/shards-resp3-failover.resp), so a shard's master is the node
//! with `role master` in a shard that has slots.

use std::ops::RangeInclusive;

use redis::Value;

use super::{Master, SLOTS};

/// Why a reply could not be read; names the part that was not as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unexpected CLUSTER SHARDS reply: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

fn bad(what: impl Into<String>) -> ParseError {
    ParseError(what.into())
}

/// Every shard that owns slots, as its master.
pub fn parse(reply: &Value) -> Result<Vec<Master>, ParseError> {
    let Value::Array(shards) = reply else {
        return Err(bad(format!("not an array of shards: {reply:?}")));
    };
    let mut masters = Vec::new();
    for shard in shards {
        let fields = pairs(shard).ok_or_else(|| bad("a shard is not a map"))?;
        let slots = field(&fields, "slots").ok_or_else(|| bad("a shard has no `slots`"))?;
        let slots = ranges(slots)?;
        if slots.is_empty() {
            continue;
        }
        let nodes = match field(&fields, "nodes") {
            Some(Value::Array(nodes)) => nodes,
            _ => return Err(bad("a shard has no `nodes` array")),
        };
        let mut master = None;
        for node in nodes {
            let node = pairs(node).ok_or_else(|| bad("a node is not a map"))?;
            if text(field(&node, "role")).as_deref() == Some("master") {
                master = Some(read_master(&node, slots.clone())?);
            }
        }
        // A shard with slots and no master (mid-failover) leaves them uncovered, which
        // `Topology::gaps` reports.
        masters.extend(master);
    }
    Ok(masters)
}

fn read_master(
    node: &[(&Value, &Value)],
    slots: Vec<RangeInclusive<u16>>,
) -> Result<Master, ParseError> {
    let id = text(field(node, "id")).ok_or_else(|| bad("a master has no `id`"))?;
    let ip = text(field(node, "ip")).unwrap_or_default();
    // `endpoint` is what MOVED names (cluster-preferred-endpoint-type); `?` or empty
    // when the node does not know it.
    let endpoint = text(field(node, "endpoint")).filter(|e| !e.is_empty() && e != "?");
    let port = read_port(node, "port")?;
    let tls_port = read_port(node, "tls-port")?;
    if port.is_none() && tls_port.is_none() {
        return Err(bad(format!(
            "master {id} has neither `port` nor `tls-port`"
        )));
    }
    Ok(Master {
        host: endpoint.unwrap_or_else(|| ip.clone()),
        ip,
        port,
        tls_port,
        failed: text(field(node, "health")).as_deref() == Some("fail"),
        slots,
        id,
    })
}

/// Flat `start end start end ...` into ranges.
fn ranges(slots: &Value) -> Result<Vec<RangeInclusive<u16>>, ParseError> {
    let Value::Array(bounds) = slots else {
        return Err(bad("`slots` is not an array"));
    };
    if bounds.len() % 2 != 0 {
        return Err(bad("`slots` has an odd number of bounds"));
    }
    let bound = |v: &Value| match int(v) {
        Some(n) if (0..i64::from(SLOTS)).contains(&n) => Ok(n as u16),
        _ => Err(bad(format!("slot bound {v:?} is not in 0..16384"))),
    };
    bounds
        .chunks(2)
        .map(|pair| {
            let (start, end) = (bound(&pair[0])?, bound(&pair[1])?);
            if start > end {
                return Err(bad(format!("slot range {start}-{end} runs backwards")));
            }
            Ok(start..=end)
        })
        .collect()
}

fn read_port(node: &[(&Value, &Value)], name: &str) -> Result<Option<u16>, ParseError> {
    match field(node, name) {
        None => Ok(None),
        Some(v) => match int(v) {
            // Redis reports a port it does not listen on as 0.
            Some(0) => Ok(None),
            Some(n) => u16::try_from(n)
                .map(Some)
                .map_err(|_| bad(format!("`{name}` {n} is not a port"))),
            None => Err(bad(format!("`{name}` is not a number: {v:?}"))),
        },
    }
}

/// A RESP3 map, or a RESP2 flat array of key/value pairs.
fn pairs(value: &Value) -> Option<Vec<(&Value, &Value)>> {
    match value {
        Value::Map(entries) => Some(entries.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(flat) if flat.len() % 2 == 0 => {
            Some(flat.chunks(2).map(|kv| (&kv[0], &kv[1])).collect())
        }
        _ => None,
    }
}

fn field<'v>(fields: &[(&'v Value, &'v Value)], name: &str) -> Option<&'v Value> {
    fields
        .iter()
        .find(|(k, _)| text(Some(k)).as_deref() == Some(name))
        .map(|(_, v)| *v)
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(Some(other))?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(resp: &[u8]) -> Vec<Master> {
        parse(&redis::parse_redis_value(resp).expect("a RESP reply")).expect("parsed")
    }

    /// Redis 7.0.15, 6 nodes, after slot 100 moved from the first master to the second.
    #[test]
    fn reads_a_captured_resp2_reply() {
        let masters = captured(include_bytes!(
            "../../../tests/fixtures/cluster/shards-resp2.resp"
        ));
        let mut seen: Vec<_> = masters.iter().map(|m| (m.port, m.slots.clone())).collect();
        seen.sort_by_key(|(port, _)| *port);
        assert_eq!(
            seen,
            vec![
                (Some(7101), vec![0..=99, 101..=5460]),
                (Some(7102), vec![100..=100, 5461..=10922]),
                (Some(7103), vec![10923..=16383]),
            ]
        );
        let first = masters.iter().find(|m| m.port == Some(7101)).unwrap();
        assert_eq!(first.id, "a3d6f9f098e7ede3cef3d4cc28c9dfe1901519ad");
        assert_eq!(
            (first.host.as_str(), first.ip.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        assert_eq!(first.tls_port, None);
        assert!(masters.iter().all(|m| !m.failed));
    }

    #[test]
    fn reads_the_same_reply_in_resp3() {
        let resp2 = captured(include_bytes!(
            "../../../tests/fixtures/cluster/shards-resp2.resp"
        ));
        let resp3 = captured(include_bytes!(
            "../../../tests/fixtures/cluster/shards-resp3.resp"
        ));
        assert_eq!(resp2, resp3);
    }

    /// After 7103 was killed and 7105 promoted: 7103 is listed, failed, with no slots.
    #[test]
    fn a_failed_master_without_slots_is_not_a_master() {
        let masters = captured(include_bytes!(
            "../../../tests/fixtures/cluster/shards-resp3-failover.resp"
        ));
        let ports: Vec<_> = masters.iter().map(|m| m.port.unwrap()).collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.contains(&7105) && !ports.contains(&7103), "{ports:?}");
        let promoted = masters.iter().find(|m| m.port == Some(7105)).unwrap();
        assert_eq!(promoted.slots, vec![10923..=16383]);
    }

    fn node(fields: &[(&str, Value)]) -> Value {
        Value::Map(
            fields
                .iter()
                .map(|(k, v)| (Value::BulkString(k.as_bytes().to_vec()), v.clone()))
                .collect(),
        )
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn shard(slots: &[i64], nodes: Vec<Value>) -> Value {
        node(&[
            (
                "slots",
                Value::Array(slots.iter().map(|&s| Value::Int(s)).collect()),
            ),
            ("nodes", Value::Array(nodes)),
        ])
    }

    #[test]
    fn tls_port_hostname_endpoint_and_health_are_kept() {
        let reply = Value::Array(vec![shard(
            &[0, 16383],
            vec![node(&[
                ("id", bulk("abc")),
                ("tls-port", Value::Int(6380)),
                ("ip", bulk("10.0.0.1")),
                ("endpoint", bulk("redis-0.example")),
                ("hostname", bulk("redis-0.example")),
                ("role", bulk("master")),
                ("health", bulk("fail")),
            ])],
        )]);
        let masters = parse(&reply).unwrap();
        assert_eq!(
            masters,
            vec![Master {
                id: "abc".into(),
                host: "redis-0.example".into(),
                ip: "10.0.0.1".into(),
                port: None,
                tls_port: Some(6380),
                failed: true,
                slots: vec![0..=16383],
            }]
        );
    }

    #[test]
    fn an_unknown_endpoint_falls_back_to_the_ip() {
        let reply = Value::Array(vec![shard(
            &[0, 10],
            vec![node(&[
                ("id", bulk("abc")),
                ("port", Value::Int(7000)),
                ("ip", bulk("10.0.0.1")),
                ("endpoint", bulk("?")),
                ("role", bulk("master")),
            ])],
        )]);
        assert_eq!(parse(&reply).unwrap()[0].host, "10.0.0.1");
    }

    #[test]
    fn malformed_replies_are_refused_with_what_was_wrong() {
        let master = || {
            node(&[
                ("id", bulk("a")),
                ("port", Value::Int(1)),
                ("role", bulk("master")),
            ])
        };
        for (reply, expect) in [
            (Value::Okay, "not an array"),
            (
                Value::Array(vec![shard(&[0], vec![master()])]),
                "odd number",
            ),
            (
                Value::Array(vec![shard(&[0, 16384], vec![master()])]),
                "not in 0..16384",
            ),
            (
                Value::Array(vec![shard(&[9, 3], vec![master()])]),
                "backwards",
            ),
            (
                Value::Array(vec![shard(
                    &[0, 1],
                    vec![node(&[("id", bulk("a")), ("role", bulk("master"))])],
                )]),
                "neither",
            ),
        ] {
            let err = parse(&reply).unwrap_err().to_string();
            assert!(err.contains(expect), "{err} lacks {expect:?}");
        }
    }
}
