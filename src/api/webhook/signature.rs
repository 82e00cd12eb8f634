//! Webhook signatures: hex HMAC-SHA256 of the signed bytes with the app's secret, checked in
//! constant time. Forgejo and Gitea send the bare hex; GitHub prefixes it with `sha256=`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whether `signature_hex` is the HMAC-SHA256 of `signed` under `secret`. An empty or non-hex
/// signature never verifies.
pub fn verify(secret: &[u8], signed: &[u8], signature_hex: &str) -> bool {
    let Ok(expected) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    if expected.is_empty() {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signed);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected).is_ok()
}

/// The hex HMAC-SHA256 of `body`, as a sender computes it (used by tests and the benchmark).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITEA_BODY: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/gitea-push-first-push-signed.json");

    #[test]
    fn giteas_recorded_delivery_verifies_with_its_known_secret() {
        let sig = "60fe446c74fa0cb9474f98cc557db79e10c7aaf22cf324ad65239600b9e4d915";
        assert!(verify(b"IsWishesWereHorsesWedAllBeEatingSteak!", GITEA_BODY, sig));
        assert_eq!(sign(b"IsWishesWereHorsesWedAllBeEatingSteak!", GITEA_BODY), sig);
    }

    #[test]
    fn githubs_documented_vector_verifies() {
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(b"It's a Secret to Everybody", b"Hello, World!", sig));
    }

    #[test]
    fn a_wrong_empty_or_malformed_signature_never_verifies() {
        let sig = sign(b"secret", b"body");
        assert!(!verify(b"other", b"body", &sig));
        assert!(!verify(b"secret", b"body ", &sig));
        assert!(!verify(b"secret", b"body", ""));
        assert!(!verify(b"secret", b"body", "zz"));
        assert!(!verify(b"secret", b"body", &sig[..10]));
    }

    #[test]
    fn reformatting_the_json_breaks_the_signature() {
        let sig = "60fe446c74fa0cb9474f98cc557db79e10c7aaf22cf324ad65239600b9e4d915";
        let v: serde_json::Value = serde_json::from_slice(GITEA_BODY).unwrap();
        let reserialized = serde_json::to_vec(&v).unwrap();
        assert!(!verify(b"IsWishesWereHorsesWedAllBeEatingSteak!", &reserialized, sig));
    }
}
