//! Browser sessions of the web page: who logged in (admin or viewer), until when, and the CSRF
//! token every state-changing form must send back. Kept in memory: a restart logs everyone out,
//! which is the safe side. Tokens are compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "kua_session";

/// How long a session lasts after login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sees and changes everything (logged in with the admin token).
    Admin,
    /// Sees everything, changes nothing (logged in with the viewer token).
    Viewer,
}

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    pub csrf: String,
    expires: Instant,
}

/// The live sessions, by session id. Cloned into every handler; one per server.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
}

/// A random 256-bit token, hex; two v4 UUIDs give 244 random bits from the OS generator.
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// True when `given` equals `expected`, in time that does not depend on where they differ.
pub fn same(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Which role a login token grants, if any.
pub fn role_of(given: &str, admin: &str, viewer: Option<&str>) -> Option<Role> {
    let given = given.trim();
    if given.is_empty() {
        return None;
    }
    if same(given, admin) {
        return Some(Role::Admin);
    }
    match viewer {
        Some(v) if same(given, v) => Some(Role::Viewer),
        _ => None,
    }
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session; returns its id (the cookie's value).
    pub fn start(&self, role: Role) -> String {
        self.start_at(role, Instant::now())
    }

    fn start_at(&self, role: Role, now: Instant) -> String {
        let id = random_token();
        let mut map = self.map();
        // Expired sessions go when a new one starts: the map cannot grow without bound.
        map.retain(|_, s| s.expires > now);
        map.insert(id.clone(), Session { role, csrf: random_token(), expires: now + LIFETIME });
        id
    }

    /// The live session of a cookie value.
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.map();
        match map.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session (logout).
    pub fn end(&self, id: &str) {
        self.map().remove(id);
    }
}

impl Session {
    /// True when a form's CSRF field matches this session's token.
    pub fn csrf_ok(&self, given: Option<&str>) -> bool {
        given.is_some_and(|g| same(g, &self.csrf))
    }
}

/// The `Set-Cookie` value that starts a session: not readable by scripts, never sent by another
/// site's request, `Secure` when served over HTTPS.
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", LIFETIME.as_secs())
}

/// The `Set-Cookie` value that ends it.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// The session id in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_grants_admin_the_viewer_token_viewer_and_anything_else_nothing() {
        assert_eq!(
            role_of("admin-token-0123456789", "admin-token-0123456789", Some("viewer-token-0123456")),
            Some(Role::Admin)
        );
        assert_eq!(
            role_of(" viewer-token-0123456 ", "admin-token-0123456789", Some("viewer-token-0123456")),
            Some(Role::Viewer)
        );
        assert_eq!(role_of("viewer-token-0123456", "admin-token-0123456789", None), None);
        assert_eq!(role_of("", "admin-token-0123456789", Some("")), None);
        assert_eq!(role_of("admin-token-012345678", "admin-token-0123456789", None), None);
    }

    #[test]
    fn a_session_has_its_own_csrf_token_and_a_wrong_or_missing_one_is_refused() {
        let sessions = Sessions::default();
        let a = sessions.get(&sessions.start(Role::Admin)).unwrap();
        let b = sessions.get(&sessions.start(Role::Admin)).unwrap();
        assert_ne!(a.csrf, b.csrf);
        assert!(a.csrf_ok(Some(&a.csrf)));
        assert!(!a.csrf_ok(Some(&b.csrf)));
        assert!(!a.csrf_ok(Some("")));
        assert!(!a.csrf_ok(None));
    }

    #[test]
    fn a_session_expires_and_logout_ends_it() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let id = sessions.start_at(Role::Viewer, now);
        assert_eq!(sessions.get_at(&id, now + LIFETIME / 2).unwrap().role, Role::Viewer);
        assert!(sessions.get_at(&id, now + LIFETIME).is_none());
        let id = sessions.start(Role::Admin);
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
        assert!(sessions.get("not-a-session").is_none());
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_and_secure_only_under_tls() {
        let plain = set_cookie("abc", false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict") && plain.contains("Max-Age="));
        assert!(!plain.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert_eq!(cookie_value("a=b; kua_session=xyz; c=d"), Some("xyz"));
        assert_eq!(cookie_value("kua_sessionx=1"), None);
    }
}
