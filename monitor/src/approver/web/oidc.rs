//! Sign-in with OpenID Connect: the authorization code flow with PKCE (S256), the
//! provider found by discovery from the issuer URL (read at the first sign-in, so the
//! service starts while the provider is down), the ID token verified against the
//! provider's JWKS (RS256, PS256, ES256, EdDSA; never `none` or an HMAC), its issuer,
//! audience, expiry and nonce checked. The approver is `oidc:<username claim>`; the groups
//! claim and the user name are matched against `[web.oidc] approvers`.
//!
//! The browser is bound to its login by a `SameSite=Lax` cookie (the provider's redirect
//! back is a cross-site navigation); the session cookie itself is `Strict`, so the
//! callback answers with a page that moves on to `/` from this site.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::config::OidcSection;
use super::httpc::{Client, HttpError};
use super::{Web, cookie, html, random_token, refuse, set_cookie};
use crate::approver::ApproverError;
use crate::os::clock::now_ms;

/// Cookie binding a browser to the login it started.
const LOGIN_COOKIE: &str = "cg_login";
/// How long a started login may take.
const LOGIN_TTL_MS: i64 = 10 * 60 * 1000;
/// Logins in flight at once.
const MAX_LOGINS: usize = 1000;
/// Clock skew tolerated on `exp` / `iat`.
const SKEW_MS: i64 = 60_000;
/// Where the provider sends the browser back.
pub const CALLBACK_PATH: &str = "/web/callback";

/// The provider's endpoints and keys.
#[derive(Clone, Debug)]
struct Provider {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    keys: Vec<Value>,
}

/// A login the browser started.
struct PendingLogin {
    verifier: String,
    nonce: String,
    binding: String,
    started_ms: i64,
    /// Where the browser goes once signed in (a path of this site).
    next: Option<String>,
}

/// What a verified sign-in says.
#[derive(Debug, PartialEq, Eq)]
pub struct SignedIn {
    pub user: String,
    pub groups: Vec<String>,
}

/// Why a sign-in failed (shown to the person, logged).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("identity provider: {0}")]
    Http(#[from] HttpError),
    #[error("identity provider: {0}")]
    Provider(String),
    #[error("ID token: {0}")]
    Token(String),
    #[error("{0}")]
    Refused(String),
}

/// The OpenID Connect client of the web page.
pub struct Oidc {
    cfg: OidcSection,
    client: Client,
    secret: Option<String>,
    redirect_uri: String,
    provider: tokio::sync::Mutex<Option<Provider>>,
    logins: Mutex<HashMap<String, PendingLogin>>,
}

impl Oidc {
    /// The client of `cfg`; `base_url` is the page's public URL. Reads the client secret.
    pub fn new(cfg: &OidcSection, base_url: &str) -> Result<Oidc, ApproverError> {
        let secret = match &cfg.client_secret_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|source| ApproverError::Io {
                        action: "read",
                        path: p.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let client = Client::new(cfg.ca_file.as_deref())
            .map_err(|e| ApproverError::Config(format!("web.oidc: {e}")))?;
        Ok(Oidc {
            cfg: cfg.clone(),
            client,
            secret,
            redirect_uri: format!("{base_url}{CALLBACK_PATH}"),
            provider: tokio::sync::Mutex::new(None),
            logins: Mutex::new(HashMap::new()),
        })
    }

    /// The provider's metadata and keys (cached; `refresh` reads the keys again).
    async fn provider(&self, refresh: bool) -> Result<Provider, OidcError> {
        let mut p = self.provider.lock().await;
        if let Some(have) = p.as_ref()
            && !refresh
        {
            return Ok(have.clone());
        }
        let issuer = self.cfg.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let meta: Value = json(&self.client.get(&url).await?)?;
        let s = |k: &str| {
            meta.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| OidcError::Provider(format!("discovery has no {k}")))
        };
        let got_issuer = s("issuer")?;
        if got_issuer.trim_end_matches('/') != issuer {
            return Err(OidcError::Provider(format!(
                "discovery names issuer {got_issuer:?}, not the configured {issuer:?}"
            )));
        }
        let jwks_uri = s("jwks_uri")?;
        let jwks: Value = json(&self.client.get(&jwks_uri).await?)?;
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| OidcError::Provider("the JWKS has no keys".into()))?;
        let fresh = Provider {
            issuer: got_issuer,
            authorization_endpoint: s("authorization_endpoint")?,
            token_endpoint: s("token_endpoint")?,
            keys,
        };
        *p = Some(fresh.clone());
        Ok(fresh)
    }

    /// Starts a login: the provider URL to send the browser to, and the binding cookie.
    /// `next` is where the browser goes once signed in (checked by [`local_next`]).
    async fn start(&self, next: Option<String>) -> Result<(String, String), OidcError> {
        let p = self.provider(false).await?;
        let (state, nonce, verifier, binding) = (
            random_token(),
            random_token(),
            random_token(),
            random_token(),
        );
        let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
        let now = now_ms();
        {
            let mut l = self.logins.lock().unwrap_or_else(|e| e.into_inner());
            l.retain(|_, v| now - v.started_ms < LOGIN_TTL_MS);
            if l.len() >= MAX_LOGINS {
                return Err(OidcError::Refused("too many sign-ins in progress".into()));
            }
            l.insert(
                state.clone(),
                PendingLogin {
                    verifier,
                    nonce: nonce.clone(),
                    binding: binding.clone(),
                    started_ms: now,
                    next,
                },
            );
        }
        let params = [
            ("response_type", "code"),
            ("client_id", &self.cfg.client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.cfg.scopes.join(" ")),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        let sep = if p.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok((
            format!("{}{sep}{}", p.authorization_endpoint, form_encode(&params)),
            binding,
        ))
    }

    /// Finishes a login: checks `state` against the browser's `binding`, exchanges `code`,
    /// verifies the ID token. Also returns where the browser goes next.
    async fn finish(
        &self,
        state: &str,
        code: &str,
        binding: &str,
    ) -> Result<(SignedIn, Option<String>), OidcError> {
        let login = self
            .logins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)
            .ok_or_else(|| OidcError::Refused("unknown or used sign-in state".into()))?;
        let fresh = now_ms() - login.started_ms < LOGIN_TTL_MS;
        let same_browser = bool::from(subtle::ConstantTimeEq::ct_eq(
            login.binding.as_bytes(),
            binding.as_bytes(),
        ));
        if !fresh || !same_browser {
            return Err(OidcError::Refused(
                "this sign-in was not started by this browser, or took too long".into(),
            ));
        }
        let p = self.provider(false).await?;
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.redirect_uri),
            ("code_verifier", &login.verifier),
        ];
        let mut headers = Vec::new();
        match &self.secret {
            Some(secret) => {
                let user = form_encode_one(&self.cfg.client_id);
                let pass = form_encode_one(secret);
                headers.push((
                    "authorization",
                    format!("Basic {}", STANDARD.encode(format!("{user}:{pass}"))),
                ));
            }
            None => params.push(("client_id", &self.cfg.client_id)),
        }
        let body = self
            .client
            .post_form(&p.token_endpoint, &form_encode(&params), &headers)
            .await?;
        let token: Value = json(&body)?;
        let id_token = token
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Provider("the token response has no id_token".into()))?;
        let claims = match self.verify(&p, id_token, &login.nonce, now_ms()) {
            Err(OidcError::Token(m)) if m.contains("no key") => {
                // The provider rotated its keys since they were read.
                let p = self.provider(true).await?;
                self.verify(&p, id_token, &login.nonce, now_ms())?
            }
            other => other?,
        };
        Ok((self.signed_in(&claims)?, login.next))
    }

    /// Verifies the ID token's signature and claims; its claims.
    fn verify(&self, p: &Provider, jwt: &str, nonce: &str, now: i64) -> Result<Value, OidcError> {
        let claims = verify_jwt(&p.keys, jwt)?;
        let bad = |m: String| Err(OidcError::Token(m));
        if claims.get("iss").and_then(Value::as_str) != Some(p.issuer.as_str()) {
            return bad(format!("issuer is not {}", p.issuer));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.cfg.client_id,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(&self.cfg.client_id)),
            _ => false,
        };
        if !aud_ok {
            return bad("the audience is not this client".into());
        }
        let secs = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_i64)
                .map(|s| s.saturating_mul(1000))
        };
        match secs("exp") {
            Some(exp) if exp + SKEW_MS > now => {}
            _ => return bad("expired or without exp".into()),
        }
        if secs("iat").is_some_and(|iat| iat > now + SKEW_MS) {
            return bad("issued in the future".into());
        }
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return bad("the nonce does not match this sign-in".into());
        }
        Ok(claims)
    }

    /// The approver in verified `claims`, if `[web.oidc] approvers` permits them.
    pub fn signed_in(&self, claims: &Value) -> Result<SignedIn, OidcError> {
        let user = claims
            .get(&self.cfg.username_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty() && u.len() <= 256 && !u.chars().any(char::is_control))
            .ok_or_else(|| {
                OidcError::Token(format!(
                    "no usable {:?} claim (username_claim)",
                    self.cfg.username_claim
                ))
            })?
            .to_owned();
        // An address the provider has not verified can be anyone's.
        if self.cfg.username_claim == "email"
            && claims.get("email_verified").and_then(Value::as_bool) != Some(true)
        {
            return Err(OidcError::Token(
                "the email claim names the approver but email_verified is not true".into(),
            ));
        }
        let groups = match claims.get(&self.cfg.groups_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(g)) => vec![g.clone()],
            _ => Vec::new(),
        };
        if !self.cfg.permits(&user, &groups) {
            return Err(OidcError::Refused(format!(
                "{user} signed in but is not an approver here ([web.oidc] approvers)"
            )));
        }
        Ok(SignedIn { user, groups })
    }
}

fn json(body: &[u8]) -> Result<Value, OidcError> {
    serde_json::from_slice(body).map_err(|e| OidcError::Provider(format!("not JSON: {e}")))
}

/// Verifies a compact JWS against `keys` (a JWKS's `keys`); its claims.
pub fn verify_jwt(keys: &[Value], jwt: &str) -> Result<Value, OidcError> {
    use ring::signature as sig;
    let bad = |m: &str| OidcError::Token(m.to_owned());
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a signed JWT"));
    };
    let header: Value = serde_json::from_slice(&B64.decode(h).map_err(|_| bad("bad header"))?)
        .map_err(|_| bad("bad header"))?;
    let signature = B64.decode(s).map_err(|_| bad("bad signature encoding"))?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Value> = keys
        .iter()
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .filter(|k| {
            k.get("use")
                .and_then(Value::as_str)
                .is_none_or(|u| u == "sig")
        })
        .collect();
    if candidates.is_empty() {
        return Err(bad("no key of the provider matches the token's kid"));
    }
    let message = format!("{h}.{c}");
    let field = |k: &Value, name: &str| -> Option<Vec<u8>> {
        k.get(name)
            .and_then(Value::as_str)
            .and_then(|v| B64.decode(v).ok())
    };
    let verified = candidates.iter().any(|k| {
        let kty = k.get("kty").and_then(Value::as_str).unwrap_or("");
        match (alg, kty) {
            ("RS256" | "PS256", "RSA") => {
                let (Some(n), Some(e)) = (field(k, "n"), field(k, "e")) else {
                    return false;
                };
                let params: &sig::RsaParameters = if alg == "RS256" {
                    &sig::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &sig::RSA_PSS_2048_8192_SHA256
                };
                sig::RsaPublicKeyComponents { n: &n, e: &e }
                    .verify(params, message.as_bytes(), &signature)
                    .is_ok()
            }
            ("ES256", "EC") => {
                let (Some(x), Some(y)) = (field(k, "x"), field(k, "y")) else {
                    return false;
                };
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message.as_bytes(), &signature)
                    .is_ok()
            }
            ("EdDSA", "OKP") => {
                let Some(x) = field(k, "x") else {
                    return false;
                };
                sig::UnparsedPublicKey::new(&sig::ED25519, x)
                    .verify(message.as_bytes(), &signature)
                    .is_ok()
            }
            _ => false,
        }
    });
    if !verified {
        return Err(bad(&format!(
            "the signature does not verify (alg {alg:?}; only RS256, PS256, ES256, EdDSA)"
        )));
    }
    serde_json::from_slice(&B64.decode(c).map_err(|_| bad("bad claims"))?)
        .map_err(|_| bad("bad claims"))
}

/// `application/x-www-form-urlencoded` of `params`.
pub fn form_encode(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode_one(k), form_encode_one(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn form_encode_one(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/web/login", get(login))
        .route(CALLBACK_PATH, get(callback))
}

/// `next` when it is a path of this page a sign-in may return to (`/web/...`, nothing that
/// could leave the site), else `None`.
pub(crate) fn local_next(next: &str) -> Option<String> {
    let ok = next.starts_with("/web/")
        && next.len() <= 2048
        && !next.contains("//")
        && !next.contains(['\\', '"', '\'', '<', '>', ' ', ';'])
        && !next.chars().any(char::is_control);
    ok.then(|| next.to_owned())
}

async fn login(State(web): State<Arc<Web>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(oidc) = &web.oidc else {
        return refuse(
            StatusCode::NOT_FOUND,
            "sign-in is not configured ([web.oidc])",
        );
    };
    let next = q.get("next").and_then(|n| local_next(n));
    match oidc.start(next).await {
        Ok((url, binding)) => {
            let mut res = Redirect::to(&url).into_response();
            res.headers_mut().insert(
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, &binding, "Lax", LOGIN_TTL_MS / 1000),
            );
            res
        }
        Err(e) => {
            tracing::warn!(error = %e, "web sign-in cannot start");
            refuse(StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(oidc) = &web.oidc else {
        return refuse(
            StatusCode::NOT_FOUND,
            "sign-in is not configured ([web.oidc])",
        );
    };
    if let Some(e) = q.error {
        let d = q.error_description.unwrap_or_default();
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("the identity provider said {e}: {d}"),
        );
    }
    let (Some(state), Some(code)) = (q.state, q.code) else {
        return refuse(StatusCode::BAD_REQUEST, "no state or code");
    };
    let binding = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    match oidc.finish(&state, &code, &binding).await {
        Ok((who, next)) => {
            let session = web.sign_in(format!("oidc:{}", who.user), who.groups);
            // A page of this site moves on, so that the Strict session cookie is sent:
            // to the page the sign-in started from (an action link), else `/`.
            let next = html::esc(
                next.as_deref()
                    .and_then(local_next)
                    .as_deref()
                    .unwrap_or("/"),
            );
            let body = html::page(
                "Signed in",
                None,
                None,
                html::Live::Off,
                &format!("<p>Signed in. <a href=\"{next}\" id=\"continue\">Continue</a></p>"),
            )
            .replace(
                "<meta charset=\"utf-8\">",
                &format!(
                    "<meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={next}\">"
                ),
            );
            let mut res =
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
            let h = res.headers_mut();
            h.append(header::SET_COOKIE, session);
            h.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", "Lax", 0));
            res
        }
        Err(e) => {
            tracing::warn!(error = %e, "web sign-in refused");
            refuse(StatusCode::FORBIDDEN, &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{self, KeyPair as _};
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn b64j(v: &Value) -> String {
        B64.encode(v.to_string())
    }

    /// An Ed25519 key: (JWKS entry, signer).
    fn ed_key(kid: &str) -> (Value, signature::Ed25519KeyPair) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
            "x": B64.encode(kp.public_key().as_ref())});
        (jwk, kp)
    }

    fn ed_jwt(kp: &signature::Ed25519KeyPair, kid: &str, claims: &Value) -> String {
        let msg = format!(
            "{}.{}",
            b64j(&json!({"alg": "EdDSA", "kid": kid})),
            b64j(claims)
        );
        format!("{msg}.{}", B64.encode(kp.sign(msg.as_bytes()).as_ref()))
    }

    fn claims() -> Value {
        json!({"iss": "https://idp.test", "aud": "confgate", "exp": NOW / 1000 + 300,
            "iat": NOW / 1000, "nonce": "n1", "sub": "alice", "preferred_username": "root",
            "groups": ["sre"]})
    }

    fn oidc() -> Oidc {
        let cfg = OidcSection {
            issuer: "https://idp.test".into(),
            client_id: "confgate".into(),
            approvers: vec!["group:sre".into(), "bob".into()],
            ..OidcSection::default()
        };
        Oidc::new(&cfg, "https://approver.test").unwrap()
    }

    fn provider(keys: Vec<Value>) -> Provider {
        Provider {
            issuer: "https://idp.test".into(),
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            keys,
        }
    }

    #[test]
    fn signatures_verify_and_forgeries_do_not() {
        let (jwk, kp) = ed_key("k1");
        let keys = vec![jwk];
        let good = ed_jwt(&kp, "k1", &claims());
        assert_eq!(verify_jwt(&keys, &good).unwrap()["sub"], "alice");
        // Claims changed after signing.
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = claims();
        c["preferred_username"] = json!("mallory");
        let forged = format!("{}.{}.{}", parts[0], b64j(&c), parts[2]);
        assert!(verify_jwt(&keys, &forged).is_err());
        // alg none and HMAC are never accepted.
        let none = format!(
            "{}.{}.",
            b64j(&json!({"alg": "none", "kid": "k1"})),
            b64j(&claims())
        );
        assert!(verify_jwt(&keys, &none).is_err());
        let hs = format!(
            "{}.{}.{}",
            b64j(&json!({"alg": "HS256", "kid": "k1"})),
            b64j(&claims()),
            parts[2]
        );
        assert!(verify_jwt(&keys, &hs).is_err());
        // Another key, or a kid the provider does not have.
        let (_, other) = ed_key("k1");
        assert!(verify_jwt(&keys, &ed_jwt(&other, "k1", &claims())).is_err());
        let e = verify_jwt(&keys, &ed_jwt(&kp, "k2", &claims())).unwrap_err();
        assert!(e.to_string().contains("no key"), "{e}");
        assert!(verify_jwt(&keys, "a.b").is_err());
    }

    #[test]
    fn es256_tokens_verify() {
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let kp = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let p = kp.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "e1",
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])});
        let msg = format!(
            "{}.{}",
            b64j(&json!({"alg": "ES256", "kid": "e1"})),
            b64j(&claims())
        );
        let sig = kp.sign(&rng, msg.as_bytes()).unwrap();
        let jwt = format!("{msg}.{}", B64.encode(sig.as_ref()));
        verify_jwt(&[jwk], &jwt).unwrap();
    }

    #[test]
    fn claims_are_checked_and_approvers_enforced() {
        let (jwk, kp) = ed_key("k1");
        let o = oidc();
        let p = provider(vec![jwk]);
        let ok = o
            .verify(&p, &ed_jwt(&kp, "k1", &claims()), "n1", NOW)
            .unwrap();
        assert_eq!(
            o.signed_in(&ok).unwrap(),
            SignedIn {
                user: "alice".into(),
                groups: vec!["sre".into()]
            }
        );
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            ed_jwt(&kp, "k1", &c)
        };
        let refused =
            |jwt: String, nonce: &str| o.verify(&p, &jwt, nonce, NOW).unwrap_err().to_string();
        assert!(refused(with("iss", json!("https://evil.test")), "n1").contains("issuer"));
        assert!(refused(with("aud", json!("other")), "n1").contains("audience"));
        o.verify(&p, &with("aud", json!(["other", "confgate"])), "n1", NOW)
            .unwrap();
        assert!(refused(with("exp", json!(NOW / 1000 - 120)), "n1").contains("expired"));
        assert!(refused(with("iat", json!(NOW / 1000 + 600)), "n1").contains("future"));
        assert!(refused(ed_jwt(&kp, "k1", &claims()), "n2").contains("nonce"));
        // Signed in at the provider, but not an approver here.
        let mut c = claims();
        c["groups"] = json!(["dev"]);
        assert!(matches!(o.signed_in(&c), Err(OidcError::Refused(_))));
        c["sub"] = json!("bob");
        assert_eq!(o.signed_in(&c).unwrap().user, "bob");
        c["sub"] = json!("bo\nb");
        assert!(o.signed_in(&c).is_err());
    }

    #[test]
    fn the_approver_is_the_subject_or_a_verified_email_never_a_chosen_name() {
        let o = oidc();
        let mut c = claims();
        c["groups"] = json!(["sre"]);
        // Default claim: `sub`, not the self-chosen preferred_username ("root").
        assert_eq!(o.signed_in(&c).unwrap().user, "alice");
        let by_email = Oidc::new(
            &OidcSection {
                issuer: "https://idp.test".into(),
                client_id: "confgate".into(),
                username_claim: "email".into(),
                approvers: vec!["group:sre".into()],
                ..OidcSection::default()
            },
            "https://approver.test",
        )
        .unwrap();
        c["email"] = json!("alice@corp.test");
        assert!(by_email.signed_in(&c).is_err(), "unverified email");
        c["email_verified"] = json!(false);
        assert!(by_email.signed_in(&c).is_err());
        c["email_verified"] = json!(true);
        assert_eq!(by_email.signed_in(&c).unwrap().user, "alice@corp.test");
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[("a b", "x&y=z/é"), ("k", "-_.~")]),
            "a%20b=x%26y%3Dz%2F%C3%A9&k=-_.~"
        );
    }
}
