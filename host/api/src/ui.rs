//! The web dashboard at `/ui`: a static page, its script and style, compiled into the binary.
//!
//! The assets are served without authentication, as kube-dashboard serves its own: they are
//! the same bytes for everyone and hold no cluster data (a browser's navigation cannot carry
//! a bearer token anyway, and a cookie would open the API to cross-site requests). Everything
//! the page shows it reads with `fetch` through the ordinary API, each request carrying the
//! bearer token the user logged in with, so authentication, RBAC, metrics and audit are the
//! ones every other client meets. A strict Content-Security-Policy (scripts and connections
//! to this origin only, no inline script) keeps the token in sessionStorage out of reach of
//! injected markup; the script writes cluster data with `textContent` only.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Result};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");
const ICON: &str = include_str!("ui/icon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
                   base-uri 'none'";

/// The dashboard's answer for a path under `/ui` (`rest`: the segments after `ui`), or `None`
/// when the path is not the dashboard's.
pub(crate) fn serve(segs: &[&str], method: &Method) -> Option<Result<Response>> {
    let rest = match segs {
        ["ui", rest @ ..] => rest,
        _ => return None,
    };
    let (body, content_type) = match rest {
        [] | ["index.html"] => (INDEX, "text/html; charset=utf-8"),
        ["app.js"] => (SCRIPT, "text/javascript; charset=utf-8"),
        ["style.css"] => (STYLE, "text/css; charset=utf-8"),
        ["icon.svg"] => (ICON, "image/svg+xml"),
        _ => {
            return Some(Err(ApiError::path_not_found(&format!(
                "/{}",
                segs.join("/")
            ))));
        }
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )));
    }
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Small and versioned with the binary: always revalidated, never stale after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if method == Method::HEAD {
        *r.body_mut() = axum::body::Body::empty();
    }
    Some(Ok(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, method: Method) -> Option<Result<Response>> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        serve(&segs, &method)
    }

    #[test]
    fn assets_are_served_with_their_types_and_policy() {
        for (path, ty) in [
            ("/ui", "text/html; charset=utf-8"),
            ("/ui/", "text/html; charset=utf-8"),
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/style.css", "text/css; charset=utf-8"),
            ("/ui/icon.svg", "image/svg+xml"),
        ] {
            let r = get(path, Method::GET).unwrap().unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], ty, "{path}");
            let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe"),
                "{csp}"
            );
        }
        assert!(get("/ui", Method::HEAD).unwrap().is_ok());
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        assert!(get("/api/v1/pods", Method::GET).is_none());
        assert!(get("/uix", Method::GET).is_none());
        let e = get("/ui/secret", Method::GET).unwrap().unwrap_err();
        assert_eq!(e.code, 404);
        let e = get("/ui/app.js", Method::POST).unwrap().unwrap_err();
        assert_eq!(e.code, 405);
    }

    /// The page loads nothing from elsewhere (it must work offline) and runs no inline script
    /// (the policy forbids it).
    #[test]
    fn the_page_is_self_contained() {
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(INDEX.contains("<script src=\"/ui/app.js\""));
        assert!(!INDEX.contains("<script>"), "inline script");
        // No event-handler attributes (` onclick=` and the like) either.
        let handlers = INDEX.match_indices(" on").any(|(i, _)| {
            let name: String = INDEX[i + 3..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            !name.is_empty() && INDEX[i + 3 + name.len()..].starts_with('=')
        });
        assert!(!handlers, "inline event handler");
        assert!(
            !SCRIPT.contains("innerHTML"),
            "cluster data is written as text only"
        );
    }
}
