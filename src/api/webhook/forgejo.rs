//! Forgejo and Gitea (`/webhook/forgejo`, `/webhook/gitea`). Forgejo sends every header family at
//! once (its own, Gitea's, Gogs' and GitHub's); Gitea sends its own. The first family present
//! names the delivery in records: `X-Forgejo-*` first, then `X-Gitea-*`. The signature is the
//! bare hex HMAC-SHA256 of the JSON document — of the decoded `payload` field for a form body,
//! not of the body as sent.

use axum::http::HeaderMap;

use super::payload::{self, PayloadError};
use super::{cut, header, signature, Credential, Envelope, EventKind, Provider, Received};

/// Header families, in order of preference: (name in records, event, signature, delivery).
const FAMILIES: [(&str, &str, &str, &str); 2] = [
    ("forgejo", "x-forgejo-event", "x-forgejo-signature", "x-forgejo-delivery"),
    ("gitea", "x-gitea-event", "x-gitea-signature", "x-gitea-delivery"),
];

pub struct Forgejo;

impl Provider for Forgejo {
    fn envelope(&self, headers: &HeaderMap) -> Result<Envelope, String> {
        let Some(&(name, event_h, signature_h, delivery_h)) = FAMILIES.iter().find(|f| headers.contains_key(f.1))
        else {
            let expected: Vec<&str> = FAMILIES.iter().map(|f| f.1).collect();
            return Err(format!("no event header: expected one of {}", expected.join(", ")));
        };
        let event = cut(header(headers, event_h).unwrap_or_default(), 64);
        Ok(Envelope {
            provider: name,
            kind: if event == "push" { EventKind::Push } else { EventKind::Other },
            event,
            delivery_id: header(headers, delivery_h).map(|d| cut(d, 100)),
            credential: Credential {
                header: signature_h,
                noun: "signature",
                value: header(headers, signature_h).unwrap_or_default().to_owned(),
            },
        })
    }

    fn fields(&self, json: &[u8]) -> Result<payload::Delivery, PayloadError> {
        payload::parse(json)
    }

    fn authenticate(&self, credential: &str, received: &Received<'_>, secret: &[u8]) -> bool {
        signature::verify(secret, received.json, credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITEA_BODY: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/gitea-push-first-push-signed.json");
    const GITEA_SECRET: &[u8] = b"IsWishesWereHorsesWedAllBeEatingSteak!";
    const GITEA_SIGNATURE: &str = "60fe446c74fa0cb9474f98cc557db79e10c7aaf22cf324ad65239600b9e4d915";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn a_forgejo_delivery_is_named_by_its_own_headers_though_it_sends_giteas_too() {
        let e = Forgejo
            .envelope(&headers(&[
                ("x-gitea-event", "push"),
                ("x-gitea-delivery", "g"),
                ("x-gitea-signature", "ab"),
                ("x-forgejo-event", "push"),
                ("x-forgejo-delivery", "f"),
                ("x-forgejo-signature", "cd"),
            ]))
            .unwrap();
        assert_eq!((e.provider, e.kind, e.delivery_id.as_deref()), ("forgejo", EventKind::Push, Some("f")));
        assert_eq!((e.credential.header, e.credential.value.as_str()), ("x-forgejo-signature", "cd"));
    }

    #[test]
    fn a_gitea_delivery_is_named_gitea_and_other_events_are_not_pushes() {
        let e = Forgejo.envelope(&headers(&[("x-gitea-event", "delete"), ("x-gitea-delivery", "g")])).unwrap();
        assert_eq!((e.provider, e.kind, e.event.as_str()), ("gitea", EventKind::Other, "delete"));
        assert_eq!(e.credential.value, "", "a missing signature is empty, refused later");
    }

    #[test]
    fn without_an_event_header_the_delivery_is_refused_naming_the_headers_expected() {
        let err = Forgejo.envelope(&headers(&[("x-github-event", "push")])).unwrap_err();
        assert!(err.contains("x-forgejo-event") && err.contains("x-gitea-event"), "{err}");
    }

    #[test]
    fn the_signature_covers_the_json_inside_a_form_body_not_the_body_as_sent() {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", std::str::from_utf8(GITEA_BODY).unwrap())
            .finish();
        let json = payload::json_of(Some("application/x-www-form-urlencoded"), form.as_bytes()).unwrap();
        assert!(Forgejo.authenticate(GITEA_SIGNATURE, &Received { body: form.as_bytes(), json: &json }, GITEA_SECRET));
        let as_sent = signature::sign(GITEA_SECRET, form.as_bytes());
        assert!(!Forgejo.authenticate(&as_sent, &Received { body: form.as_bytes(), json: &json }, GITEA_SECRET));
        let json_body = Received { body: GITEA_BODY, json: GITEA_BODY };
        assert!(Forgejo.authenticate(GITEA_SIGNATURE, &json_body, GITEA_SECRET));
        assert!(!Forgejo.authenticate(GITEA_SIGNATURE, &json_body, b"another secret"));
    }

    #[test]
    fn the_fields_are_the_repositorys_full_name_ref_and_after() {
        let d = Forgejo.fields(GITEA_BODY).unwrap();
        let p = d.push().unwrap();
        assert!(d.repository.contains('/'));
        assert!(p.git_ref.starts_with("refs/heads/") && p.after.is_some());
        assert_eq!(Forgejo.fields(b"{}").unwrap_err(), PayloadError::Missing("repository.full_name"));
    }
}
