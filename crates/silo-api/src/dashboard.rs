//! The web dashboard at `/dashboard/`: a single-page app (web/, built with npm at build
//! time by this crate's build.rs) embedded in the binary. It is a client of the API on
//! the same origin: the API key it logs in with goes in `X-API-Key` (and in `?api_key=`
//! for the terminal's WebSocket); the files themselves need no key.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

#[derive(rust_embed::RustEmbed)]
#[folder = "../../web/dist/"]
struct Assets;

/// `GET /dashboard`: to the app.
pub async fn root() -> Redirect {
    Redirect::permanent("/dashboard/")
}

/// `GET /dashboard/`: the app's page.
pub async fn index() -> Response {
    asset("index.html")
}

/// `GET /dashboard/{*path}`: its scripts, styles and images; any other path is the app's
/// page (it routes by the URL's fragment).
pub async fn file(Path(path): Path<String>) -> Response {
    if Assets::get(&path).is_some() {
        asset(&path)
    } else {
        asset("index.html")
    }
}

fn asset(path: &str) -> Response {
    let Some(file) = Assets::get(path) else {
        return (
            StatusCode::NOT_FOUND,
            "the dashboard was not built into this binary",
        )
            .into_response();
    };
    // Hashed file names (assets/) never change; the page itself must be fetched anew.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, file.metadata.mimetype().to_owned()),
            (header::CACHE_CONTROL, cache.to_owned()),
        ],
        file.data,
    )
        .into_response()
}
