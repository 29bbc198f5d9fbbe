//! The Debian mirror, derived from the host's own apt sources.
//!
//! silo never names a mirror host: it uses the `URIs:` of the host's deb822 entry
//! (`/etc/apt/sources.list.d/*.sources`) whose `Suites:` include the wanted suite, or
//! the URI of a one-line `deb` entry (`/etc/apt/sources.list`, `*.list`) for it.
//! Disabled entries (`Enabled: no`) and `deb-src`-only entries are skipped.

use std::io;
use std::path::{Path, PathBuf};

/// Errors finding the mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("read apt sources {path}")]
    ReadSources {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no apt source for suite {suite} in {dir}; add a `deb` entry for it (deb822 or one-line) so silo can use the same mirror")]
    NoSource { suite: String, dir: PathBuf },
}

/// The mirror URI for `suite` from the apt configuration under `etc_apt` (normally
/// `/etc/apt`).
pub fn debian_mirror(etc_apt: &Path, suite: &str) -> Result<String, MirrorError> {
    let read = |path: &Path| match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MirrorError::ReadSources {
            path: path.to_owned(),
            source,
        }),
    };
    let dir = etc_apt.join("sources.list.d");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(MirrorError::ReadSources { path: dir, source }),
    };
    files.sort();
    // deb822 first: it is what current Debian writes.
    for path in files.iter().filter(|p| has_ext(p, "sources")) {
        if let Some(uri) = read(path)?.and_then(|text| from_deb822(&text, suite)) {
            return Ok(uri);
        }
    }
    let one_line = std::iter::once(etc_apt.join("sources.list"))
        .chain(files.into_iter().filter(|p| has_ext(p, "list")));
    for path in one_line {
        if let Some(uri) = read(&path)?.and_then(|text| from_one_line(&text, suite)) {
            return Ok(uri);
        }
    }
    Err(MirrorError::NoSource {
        suite: suite.to_owned(),
        dir: etc_apt.to_owned(),
    })
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

/// The first URI of the first enabled `deb` stanza listing `suite`.
pub fn from_deb822(text: &str, suite: &str) -> Option<String> {
    let mut stanzas: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            stanzas.push(Vec::new());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let fields = stanzas.last_mut().expect("never empty");
        if line.starts_with([' ', '\t']) {
            // Continuation of a multi-line field.
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    stanzas.iter().find_map(|fields| {
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let enabled = get("enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        let is_deb = get("types")?.split_whitespace().any(|t| t == "deb");
        let has_suite = get("suites")?.split_whitespace().any(|s| s == suite);
        if enabled && is_deb && has_suite {
            get("uris")?.split_whitespace().next().map(str::to_owned)
        } else {
            None
        }
    })
}

/// The URI of the first `deb [options] URI SUITE COMPONENTS...` line for `suite`.
pub fn from_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let rest = line.trim().strip_prefix("deb")?;
        if !rest.starts_with([' ', '\t']) {
            return None; // deb-src
        }
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hosts under .invalid (RFC 2606): never a real mirror.
    const DEB822: &str = "\
Types: deb-src
URIs: http://src.invalid/debian
Suites: bookworm

Types: deb
# http://snapshot.invalid/archive/debian/20250520T000000Z
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
";

    #[test]
    fn deb822_picks_the_deb_stanza_with_the_suite() {
        assert_eq!(
            from_deb822(DEB822, "bookworm").as_deref(),
            Some("http://mirror.invalid/debian")
        );
        assert_eq!(
            from_deb822(DEB822, "bookworm-security").as_deref(),
            Some("http://mirror.invalid/debian-security")
        );
        assert_eq!(from_deb822(DEB822, "trixie"), None);
    }

    #[test]
    fn deb822_skips_disabled_and_handles_continuations() {
        let text = "Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nEnabled: no\n\n\
                    Types: deb\nURIs:\n http://on.invalid/debian\nSuites:\n bookworm\n";
        assert_eq!(
            from_deb822(text, "bookworm").as_deref(),
            Some("http://on.invalid/debian")
        );
    }

    #[test]
    fn one_line_entries_with_options_and_comments() {
        let text = "# deb http://commented.invalid/debian bookworm main\n\
                    deb-src http://src.invalid/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main # note\n";
        assert_eq!(
            from_one_line(text, "bookworm").as_deref(),
            Some("http://mirror.invalid/debian")
        );
        assert_eq!(from_one_line(text, "bookworm-backports"), None);
    }

    #[test]
    fn reads_an_etc_apt_tree() {
        let etc = tempfile::tempdir().expect("tempdir");
        let d = etc.path().join("sources.list.d");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(
            d.join("backports.sources"),
            "Types: deb\nURIs: http://bp.invalid/debian\nSuites: bookworm-backports\n",
        )
        .expect("write");
        std::fs::write(
            etc.path().join("sources.list"),
            "deb http://old.invalid/debian bookworm main\n",
        )
        .expect("write");
        assert_eq!(
            debian_mirror(etc.path(), "bookworm").expect("found"),
            "http://old.invalid/debian"
        );
        std::fs::write(d.join("debian.sources"), DEB822).expect("write");
        assert_eq!(
            debian_mirror(etc.path(), "bookworm").expect("found"),
            "http://mirror.invalid/debian"
        );
        assert!(matches!(
            debian_mirror(etc.path(), "trixie"),
            Err(MirrorError::NoSource { .. })
        ));
    }
}
