use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/ec-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/keys/ec-public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({"exp": now() + 60, "sub": "u42", "channels": ["user:42:*"]});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
    )
}

fn auth(key: KeySource) -> Auth {
    Auth::new(Settings {
        key,
        public_channels: Patterns::new(["lobby", "public:*"]),
        ..Settings::default()
    })
    .unwrap()
}

#[test]
fn off_by_default_allows_everything() {
    let auth = auth(KeySource::None);
    let grant = auth.authenticate(None).unwrap();
    assert!(auth.allows(&grant, "anything") && grant.expires_at.is_none());
}

#[test]
fn hs256_grants_the_token_channels_and_public_ones() {
    let auth = auth(KeySource::Secret("s3cret".into()));
    assert_eq!(auth.authenticate(None), Err(TokenError::Missing));
    let grant = auth
        .authenticate(Some(&hs("s3cret", &claims(json!({})))))
        .unwrap();
    assert_eq!(grant.subject.as_deref(), Some("u42"));
    assert!(auth.allows(&grant, "user:42:inbox"));
    assert!(auth.allows(&grant, "lobby") && auth.allows(&grant, "public:x"));
    assert!(!auth.allows(&grant, "user:43:inbox"));
}

#[test]
fn refuses_bad_tokens_with_a_reason() {
    let auth = auth(KeySource::Secret("s3cret".into()));
    let refused = |token: &str| match auth.authenticate(Some(token)) {
        Err(TokenError::Invalid(why)) => why,
        other => panic!("accepted or missing: {other:?}"),
    };
    assert_eq!(refused("garbage"), "malformed token");
    assert_eq!(refused(&hs("other", &claims(json!({})))), "bad signature");
    assert_eq!(
        refused(&hs("s3cret", &claims(json!({"exp": now() - 10})))),
        "expired"
    );
    assert_eq!(
        refused(&hs("s3cret", &claims(json!({"nbf": now() + 60})))),
        "not valid yet (nbf)"
    );
    assert_eq!(
        refused(&hs("s3cret", &claims(json!({"iat": now() + 600})))),
        "issued in the future (iat)"
    );
    assert!(auth
        .authenticate(Some(&hs("s3cret", &claims(json!({"iat": now() - 5})))))
        .is_ok());
    let no_exp = json!({"sub": "u42", "channels": []});
    assert_eq!(refused(&hs("s3cret", &no_exp)), "missing claim exp");
    // An RS256 token must not pass where HS256 is configured (algorithm confusion).
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    assert_eq!(
        refused(&sign(Algorithm::RS256, None, &rsa, &claims(json!({})))),
        "algorithm not accepted"
    );
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    let auth = Auth::new(Settings {
        key: KeySource::Secret("k".into()),
        audience: Some("herald".into()),
        issuer: Some("https://issuer".into()),
        ..Settings::default()
    })
    .unwrap();
    let good = claims(json!({"aud": "herald", "iss": "https://issuer"}));
    assert!(auth.authenticate(Some(&hs("k", &good))).is_ok());
    let wrong_aud = claims(json!({"aud": "other", "iss": "https://issuer"}));
    assert!(auth.authenticate(Some(&hs("k", &wrong_aud))).is_err());
    let wrong_iss = claims(json!({"aud": "herald", "iss": "https://evil"}));
    assert!(auth.authenticate(Some(&hs("k", &wrong_iss))).is_err());
    // Configured means required: a token without them is refused, naming the claim.
    let no_aud = claims(json!({"iss": "https://issuer"}));
    let refusal = auth.authenticate(Some(&hs("k", &no_aud))).unwrap_err();
    assert_eq!(refusal.to_string(), "token refused: missing claim aud");
    let no_iss = claims(json!({"aud": "herald"}));
    let refusal = auth.authenticate(Some(&hs("k", &no_iss))).unwrap_err();
    assert_eq!(refusal.to_string(), "token refused: missing claim iss");
    // Not configured: neither is needed.
    let open = self::auth(KeySource::Secret("k".into()));
    assert!(open
        .authenticate(Some(&hs("k", &claims(json!({})))))
        .is_ok());
}

#[test]
fn rs256_and_es256_public_keys() {
    let rsa = auth(KeySource::PublicKeyPem(RSA_PUBLIC.to_vec()));
    let signing = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    assert!(rsa
        .authenticate(Some(&sign(
            Algorithm::RS256,
            None,
            &signing,
            &claims(json!({}))
        )))
        .is_ok());

    let ec = auth(KeySource::PublicKeyPem(EC_PUBLIC.to_vec()));
    let signing = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
    let token = sign(Algorithm::ES256, None, &signing, &claims(json!({})));
    let grant = ec.authenticate(Some(&token)).unwrap();
    assert!(grant.expires_at.unwrap() > SystemTime::now() + Duration::from_secs(30));

    assert!(Auth::new(Settings {
        key: KeySource::PublicKeyPem(b"not a key".to_vec()),
        ..Settings::default()
    })
    .is_err());
}

#[test]
fn jwks_picks_the_key_by_kid() {
    let rsa_signing = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let ec_signing = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa_signing, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("r1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec_signing, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("e1".into());
    let set = JwkSet {
        keys: vec![rsa_jwk, ec_jwk],
    };
    let auth = auth(KeySource::Jwks(serde_json::to_string(&set).unwrap()));

    let by_rsa = sign(
        Algorithm::RS256,
        Some("r1"),
        &rsa_signing,
        &claims(json!({})),
    );
    let by_ec = sign(
        Algorithm::ES256,
        Some("e1"),
        &ec_signing,
        &claims(json!({})),
    );
    assert!(auth.authenticate(Some(&by_rsa)).is_ok());
    assert!(auth.authenticate(Some(&by_ec)).is_ok());
    let unknown = sign(
        Algorithm::ES256,
        Some("zz"),
        &ec_signing,
        &claims(json!({})),
    );
    assert!(auth.authenticate(Some(&unknown)).is_err());
    let swapped = sign(
        Algorithm::ES256,
        Some("r1"),
        &ec_signing,
        &claims(json!({})),
    );
    assert!(auth.authenticate(Some(&swapped)).is_err());
}
