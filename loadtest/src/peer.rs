//! What differs between the servers on the subscriber side: the upgrade URL, whether a
//! `welcome` confirms the subscription, and how frames decode.
//!
//! Herald: `/ws?channels=a,b`, a `welcome` frame once the subscriptions are in place,
//! envelopes around payloads. Nchan: the channel is part of the location (`{channel}` in
//! the template; several channels joined by commas, for a location configured with
//! `nchan_channel_id_split_delimiter ","`), subscribed once the upgrade succeeds, bare
//! payloads.

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::cli::PeerKind;
use crate::decode::{self, Decoded};

/// The server under test, as a worker needs to know it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Peer {
    /// `target` is the /ws URL.
    Herald { target: String },
    /// `target` is a websocket location template holding `{channel}`.
    Nchan { target: String },
}

/// Where to connect and what to put in `Host`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
}

impl Peer {
    pub fn new(kind: PeerKind, target: &str) -> Result<Peer, String> {
        let peer = match kind {
            PeerKind::Herald => Peer::Herald {
                target: target.into(),
            },
            PeerKind::Nchan if !target.contains("{channel}") => {
                return Err(format!("nchan target {target:?} must contain {{channel}}"))
            }
            PeerKind::Nchan => Peer::Nchan {
                target: target.into(),
            },
        };
        peer.endpoint()?;
        Ok(peer)
    }

    /// The address every client connects to.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let url = self.url("x")?;
        let host = url.host_str().ok_or("target has no host")?;
        let port = url.port_or_known_default().ok_or("target has no port")?;
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to nothing"))?;
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok(Endpoint { addr, host })
    }

    /// The request path and query for a client subscribed to `names`.
    pub fn request_path(&self, names: &[String], token: Option<&str>) -> Result<String, String> {
        let mut url = match self {
            Peer::Herald { .. } => {
                let mut url = self.url("")?;
                if !names.is_empty() {
                    url.query_pairs_mut()
                        .append_pair("channels", &names.join(","));
                }
                url
            }
            Peer::Nchan { .. } => self.url(&names.join(","))?,
        };
        if let Some(token) = token {
            url.query_pairs_mut().append_pair("token", token);
        }
        Ok(match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        })
    }

    /// Whether a client is subscribed only once a `welcome` frame arrives.
    pub fn waits_for_welcome(&self) -> bool {
        matches!(self, Peer::Herald { .. })
    }

    pub fn decode<'a>(&self, text: &'a [u8]) -> Decoded<'a> {
        match self {
            Peer::Herald { .. } => decode::herald(text),
            Peer::Nchan { .. } => decode::nchan(text),
        }
    }

    fn url(&self, channel: &str) -> Result<Url, String> {
        let raw = match self {
            Peer::Herald { target } => target.clone(),
            Peer::Nchan { target } => target.replace("{channel}", channel),
        };
        let url = Url::parse(&raw).map_err(|e| format!("target {raw:?}: {e}"))?;
        if url.scheme() != "ws" {
            return Err(format!("target {raw:?}: only ws:// is supported"));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_puts_channels_in_the_query() {
        let peer = Peer::new(PeerKind::Herald, "ws://127.0.0.1:8090/ws").expect("peer");
        let names = vec!["lt.1".to_owned(), "lt.9".to_owned()];
        let path = peer.request_path(&names, Some("abc")).expect("path");
        assert_eq!(path, "/ws?channels=lt.1%2Clt.9&token=abc");
        let endpoint = peer.endpoint().expect("endpoint");
        assert_eq!(endpoint.addr, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(endpoint.host, "127.0.0.1:8090");
        assert_eq!(peer.request_path(&[], None).expect("path"), "/ws");
        assert_eq!(
            peer.request_path(&[], Some("abc")).expect("path"),
            "/ws?token=abc"
        );
    }

    #[test]
    fn nchan_puts_channels_in_the_path() {
        let peer = Peer::new(PeerKind::Nchan, "ws://127.0.0.1:8081/sub/{channel}").expect("peer");
        let names = vec!["lt.1".to_owned(), "lt.2".to_owned()];
        assert_eq!(
            peer.request_path(&names, None).expect("path"),
            "/sub/lt.1,lt.2"
        );
        assert!(Peer::new(PeerKind::Nchan, "ws://127.0.0.1:8081/sub").is_err());
    }
}
