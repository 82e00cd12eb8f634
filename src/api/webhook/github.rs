//! GitHub (`/webhook/github`): event `X-GitHub-Event`, delivery `X-GitHub-Delivery` (kept by
//! "Redeliver"), signature `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>` over the body exactly as
//! sent, form bodies included. Tag pushes arrive as `push` events with a `refs/tags/` ref.

use axum::http::HeaderMap;

use super::payload::{self, PayloadError};
use super::{cut, header, signature, Credential, Envelope, EventKind, Provider, Received};

const EVENT: &str = "x-github-event";
const SIGNATURE: &str = "x-hub-signature-256";
const DELIVERY: &str = "x-github-delivery";

pub struct GitHub;

impl Provider for GitHub {
    fn envelope(&self, headers: &HeaderMap) -> Result<Envelope, String> {
        let event = header(headers, EVENT).ok_or_else(|| format!("no event header: expected one of {EVENT}"))?;
        let event = cut(event, 64);
        // A signature without its scheme is no signature: it is refused as missing.
        let signature = header(headers, SIGNATURE).unwrap_or_default().strip_prefix("sha256=").unwrap_or("");
        Ok(Envelope {
            provider: "github",
            kind: if event == "push" { EventKind::Push } else { EventKind::Other },
            event,
            delivery_id: header(headers, DELIVERY).map(|d| cut(d, 100)),
            credential: Credential { header: SIGNATURE, noun: "signature", value: signature.to_owned() },
        })
    }

    fn fields(&self, json: &[u8]) -> Result<payload::Delivery, PayloadError> {
        payload::parse(json)
    }

    fn authenticate(&self, credential: &str, received: &Received<'_>, secret: &[u8]) -> bool {
        signature::verify(secret, received.body, credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn the_signature_is_read_without_its_scheme_and_a_bare_one_counts_as_missing() {
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let e = GitHub
            .envelope(&headers(&[
                ("x-github-event", "push"),
                ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
                ("x-hub-signature-256", &format!("sha256={sig}")),
            ]))
            .unwrap();
        assert_eq!((e.provider, e.kind), ("github", EventKind::Push));
        assert_eq!(e.delivery_id.as_deref(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert_eq!(e.credential.value, sig);
        let bare = GitHub.envelope(&headers(&[("x-github-event", "ping"), ("x-hub-signature-256", sig)])).unwrap();
        assert_eq!((bare.kind, bare.credential.value.as_str()), (EventKind::Other, ""));
        assert!(GitHub.envelope(&headers(&[("x-gitea-event", "push")])).unwrap_err().contains(EVENT));
    }

    #[test]
    fn the_signature_covers_the_body_as_sent_even_a_form_body() {
        // GitHub's documented test vector.
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let hello = Received { body: b"Hello, World!", json: b"Hello, World!" };
        assert!(GitHub.authenticate(sig, &hello, b"It's a Secret to Everybody"));
        assert!(!GitHub.authenticate(sig, &hello, b"another secret"));
        let form = b"payload=%7B%7D";
        let over_body = signature::sign(b"s", form);
        assert!(GitHub.authenticate(&over_body, &Received { body: form, json: b"{}" }, b"s"));
        let over_json = signature::sign(b"s", b"{}");
        assert!(!GitHub.authenticate(&over_json, &Received { body: form, json: b"{}" }, b"s"));
    }

    #[test]
    fn a_recorded_tag_deletion_names_its_repository_tag_and_no_commit() {
        let d = GitHub.fields(&fixture("github-push-tag-delete.json")).unwrap();
        let p = d.push().unwrap();
        assert!(d.repository.contains('/'));
        assert_eq!((p.target, p.after), (payload::PushRef::Tag("simple-tag".into()), None));
    }
}
