//! Every route of the router, walked: a route that is not in the public
//! module must refuse a request that carries no credentials with 401, and
//! the public routes are exactly the ones listed here (a new public route
//! has to be added to this list, where a reviewer sees it).

use axum::body::Body;
use axum::http::{Method, Request};
use custody_identity::KeyPair;
use custody_server::config::Config;
use custody_server::routes::{self, Access};
use custody_server::AppState;
use tower::ServiceExt;

const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/v1/checkpoint"),
    ("GET", "/v1/proof/inclusion"),
    ("GET", "/v1/proof/consistency"),
    ("POST", "/v1/checkpoint/cosignature"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_outside_the_public_module_answers_without_credentials() {
    let t = tempfile::tempdir().unwrap();
    let (admin, dev) = (KeyPair::generate().did(), KeyPair::generate().did());
    let text = format!(
        "data = {:?}\n[trust]\nadmins = [\"{admin}\"]\ndelegators = [\"{dev}\"]\n",
        t.path().join("data")
    );
    let cfg = Config::parse(&text, &t.path().join("custody.toml")).unwrap();
    let state = AppState::open(cfg, None).await.unwrap();
    let table = routes::table();
    assert!(table.len() >= 15, "{} routes", table.len());

    let public: Vec<(String, &str)> = table
        .iter()
        .filter(|r| r.access == Access::Public)
        .map(|r| (r.method.to_string(), r.path))
        .collect();
    let listed: Vec<(String, &str)> = PUBLIC.iter().map(|(m, p)| (m.to_string(), *p)).collect();
    assert_eq!(public, listed, "the public routes changed");

    for r in &table {
        let req = Request::builder()
            .method(r.method.clone())
            .uri(r.path)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let resp = routes::router(state.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_default();
        match r.access {
            Access::Signed => assert_eq!(
                (status, code.as_str()),
                (401, "unsigned"),
                "{} {} answered without a signature",
                r.method,
                r.path
            ),
            Access::Ingest => assert_eq!(
                (status, code.as_str()),
                (401, "bad_ingest_token"),
                "{} {} answered without an ingest token",
                r.method,
                r.path
            ),
            Access::Public => assert_ne!(status, 401, "{} {}", r.method, r.path),
        }
    }
    // A method a path does not have is not a way in either.
    let req = Request::builder()
        .method(Method::DELETE)
        .uri("/v1/revoke")
        .body(Body::empty())
        .unwrap();
    let resp = routes::router(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
}
