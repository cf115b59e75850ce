//! Who may connect and which channels they may hold.
//!
//! Authentication is off until a key is configured: then every connection needs a JWT
//! (HS256 shared secret, RS256/ES256 PEM public key, or a JWKS file) whose `channels`
//! claim lists the patterns it may subscribe to. Public patterns are open to anyone
//! connected. With authentication off, any valid channel is allowed.

mod pattern;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

pub use pattern::Patterns;

/// Where the verification key comes from (at most one).
#[derive(Debug, Clone, Default)]
pub enum KeySource {
    #[default]
    None,
    /// HS256 with this shared secret.
    Secret(String),
    /// A PEM file holding an RSA (RS256) or P-256 (ES256) public key.
    PublicKeyPem(Vec<u8>),
    /// A JWKS document; tokens pick a key by `kid`.
    Jwks(String),
}

/// What the configuration says about tokens.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub key: KeySource,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`.
    pub leeway: Duration,
    pub public_channels: Patterns,
}

/// A key the configuration could not turn into a verifier; names the problem, never the key.
#[derive(Debug)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a token was refused. The text is safe to show a client: it never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Invalid(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Missing => f.write_str("a token is required"),
            TokenError::Invalid(why) => write!(f, "token refused: {why}"),
        }
    }
}

/// What one connection may do, from its token (or from the absence of auth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`, kept so a refresh cannot switch identities.
    pub subject: Option<String>,
    /// When the token stops being valid; `None` without auth.
    pub expires_at: Option<SystemTime>,
    /// `None` means any channel (auth off).
    channels: Option<Patterns>,
}

#[derive(Deserialize)]
struct Claims {
    /// Required; optional here only so a token without it is refused by the validation
    /// with "missing claim exp" rather than as malformed JSON.
    exp: Option<u64>,
    /// Checked against the clock: a token issued in the future is refused.
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

pub struct Auth {
    keys: Vec<Key>,
    public: Patterns,
}

impl Auth {
    pub fn new(settings: Settings) -> Result<Self, KeyError> {
        let keys = match &settings.key {
            KeySource::None => Vec::new(),
            KeySource::Secret(secret) => {
                vec![key(
                    None,
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                    &settings,
                )]
            }
            KeySource::PublicKeyPem(pem) => vec![pem_key(pem, &settings)?],
            KeySource::Jwks(json) => jwks_keys(json, &settings)?,
        };
        Ok(Auth {
            keys,
            public: settings.public_channels,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks a connection's token; without auth every connection gets an open grant.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Grant, TokenError> {
        if !self.enabled() {
            return Ok(Grant {
                subject: None,
                expires_at: None,
                channels: None,
            });
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("malformed token".into()))?;
        let key = match header.kid.as_deref() {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or_else(|| TokenError::Invalid("no key for this token".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| TokenError::Invalid(reason(&e)))?;
        let exp = data
            .claims
            .exp
            .ok_or_else(|| TokenError::Invalid("missing claim exp".into()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if data
            .claims
            .iat
            .is_some_and(|iat| iat > now.as_secs() + key.validation.leeway)
        {
            return Err(TokenError::Invalid("issued in the future (iat)".into()));
        }
        Ok(Grant {
            subject: data.claims.sub,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(exp)),
            channels: Some(Patterns::new(data.claims.channels)),
        })
    }

    /// Whether `grant` may subscribe to `channel`.
    pub fn allows(&self, grant: &Grant, channel: &str) -> bool {
        match &grant.channels {
            None => true,
            Some(patterns) => patterns.allows(channel) || self.public.allows(channel),
        }
    }
}

fn key(kid: Option<String>, key: DecodingKey, alg: Algorithm, settings: &Settings) -> Key {
    let mut validation = Validation::new(alg);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_nbf = true;
    validation.validate_aud = settings.audience.is_some();
    if let Some(audience) = &settings.audience {
        validation.set_audience(&[audience]);
    }
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
    }
    // jsonwebtoken checks `aud` and `iss` only when the token has them: a configured one
    // must also be present, or a token minted for anything else would pass.
    let mut required = vec!["exp"];
    required.extend(settings.audience.as_ref().map(|_| "aud"));
    required.extend(settings.issuer.as_ref().map(|_| "iss"));
    validation.set_required_spec_claims(&required);
    Key {
        kid,
        key,
        validation,
    }
}

fn pem_key(pem: &[u8], settings: &Settings) -> Result<Key, KeyError> {
    if let Ok(rsa) = DecodingKey::from_rsa_pem(pem) {
        return Ok(key(None, rsa, Algorithm::RS256, settings));
    }
    if let Ok(ec) = DecodingKey::from_ec_pem(pem) {
        return Ok(key(None, ec, Algorithm::ES256, settings));
    }
    Err(KeyError(
        "HERALD_JWT_PUBLIC_KEY holds neither an RSA nor an EC public key in PEM".into(),
    ))
}

fn jwks_keys(json: &str, settings: &Settings) -> Result<Vec<Key>, KeyError> {
    let set: JwkSet = serde_json::from_str(json)
        .map_err(|e| KeyError(format!("HERALD_JWT_JWKS is not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            // Other key types are not offered; skip rather than refuse the whole set.
            _ => continue,
        };
        let decoding = DecodingKey::from_jwk(jwk)
            .map_err(|e| KeyError(format!("HERALD_JWT_JWKS has an unusable key: {e}")))?;
        keys.push(key(jwk.common.key_id.clone(), decoding, alg, settings));
    }
    if keys.is_empty() {
        return Err(KeyError("HERALD_JWT_JWKS holds no RSA or P-256 key".into()));
    }
    Ok(keys)
}

/// A short reason for a refusal, from jsonwebtoken's error kinds.
fn reason(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAlgorithm => "algorithm not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        _ => "malformed token".into(),
    }
}

#[cfg(test)]
mod tests;
