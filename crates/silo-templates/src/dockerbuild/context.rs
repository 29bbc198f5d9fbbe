//! The build context: the files COPY and ADD may take, minus what `.dockerignore`
//! excludes, and the content hash that keys a COPY step's layer.
//!
//! `.dockerignore` follows Docker's rules: one pattern per line relative to the context
//! root, `#` comments, `*`, `?`, `**`, `!` re-includes, the last matching line wins, and
//! a pattern matching a directory excludes everything under it.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use sha2::{Digest, Sha256};

/// One `.dockerignore` line.
struct Rule {
    matcher: GlobMatcher,
    include: bool,
}

/// The files of a context that a build may copy.
#[derive(Debug)]
pub struct Context {
    pub root: PathBuf,
    /// Relative paths of files, symlinks and directories, sorted; ignored ones left out.
    entries: Vec<PathBuf>,
}

/// What a COPY source resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Relative to the context root.
    pub path: PathBuf,
    pub is_dir: bool,
}

impl Context {
    /// Read `root` and its `.dockerignore`.
    pub fn open(root: &Path) -> Result<Context, String> {
        let root = root
            .canonicalize()
            .map_err(|e| format!("build context {}: {e}", root.display()))?;
        if !root.is_dir() {
            return Err(format!(
                "build context {} is not a directory",
                root.display()
            ));
        }
        let rules = match std::fs::read_to_string(root.join(".dockerignore")) {
            Ok(text) => parse_ignore(&text)?,
            Err(_) => Vec::new(),
        };
        let mut entries = Vec::new();
        let mut walk = walkdir::WalkDir::new(&root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = walk.next() {
            let entry = entry.map_err(|e| format!("reading the build context: {e}"))?;
            let relative = entry
                .path()
                .strip_prefix(&root)
                .map_err(|e| e.to_string())?
                .to_path_buf();
            if ignored(&rules, &relative) {
                // An excluded directory may still hold re-included files (`!dir/keep`),
                // so it is only skipped whole when no rule re-includes anything.
                if entry.file_type().is_dir() && !rules.iter().any(|r| r.include) {
                    walk.skip_current_dir();
                }
                continue;
            }
            entries.push(relative);
        }
        Ok(Context { root, entries })
    }

    /// Every entry a build may copy (relative paths, sorted).
    pub fn entries(&self) -> &[PathBuf] {
        &self.entries
    }

    /// A directory of the context by its relative path (symlinks resolved, and still
    /// inside the context).
    pub fn within(&self, dir: &str) -> Result<PathBuf, String> {
        let outside = || format!("{dir:?} leaves the build context; give a path inside it");
        let cleaned = clean(dir).ok_or_else(outside)?;
        let path =
            self.root.join(&cleaned).canonicalize().map_err(|e| {
                format!("{dir:?} in the build context {}: {e}", self.root.display())
            })?;
        if !path.starts_with(&self.root) {
            return Err(outside());
        }
        if !path.is_dir() {
            return Err(format!("{dir:?} in the build context is not a directory"));
        }
        Ok(path)
    }

    /// The entries a COPY source names: a path, or a pattern with `*`, `?` or `[`.
    pub fn resolve(&self, source: &str) -> Result<Vec<Source>, String> {
        let cleaned = clean(source).ok_or_else(|| {
            format!("COPY source {source:?} leaves the build context; sources are relative to it")
        })?;
        let is_pattern = source.contains(['*', '?', '[']);
        let found: Vec<Source> = if cleaned.as_os_str().is_empty() {
            vec![Source {
                path: PathBuf::new(),
                is_dir: true,
            }]
        } else if is_pattern {
            let matcher = glob(&cleaned.to_string_lossy())?;
            self.entries
                .iter()
                .filter(|p| matcher.is_match(p))
                .map(|p| self.source(p))
                .collect()
        } else {
            self.entries
                .iter()
                .filter(|p| **p == cleaned)
                .map(|p| self.source(p))
                .collect()
        };
        if found.is_empty() {
            return Err(format!(
                "COPY source {source:?} is not in the build context {} (or .dockerignore excludes it)",
                self.root.display()
            ));
        }
        Ok(found)
    }

    fn source(&self, relative: &Path) -> Source {
        Source {
            path: relative.to_path_buf(),
            is_dir: self.root.join(relative).is_dir(),
        }
    }

    /// The entries under a directory source (itself excluded), relative to the context.
    pub fn under<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
        self.entries
            .iter()
            .filter(move |p| p.starts_with(dir) && p.as_path() != dir)
    }

    /// SHA-256 over the sources' paths, modes, link targets and contents: what a COPY's
    /// layer depends on besides its text.
    pub fn hash(&self, sources: &[Source]) -> Result<String, String> {
        let mut sha = Sha256::new();
        for source in sources {
            let files: Vec<&Path> = if source.is_dir {
                self.under(&source.path).map(PathBuf::as_path).collect()
            } else {
                vec![source.path.as_path()]
            };
            for relative in std::iter::once(source.path.as_path()).chain(files) {
                let full = self.root.join(relative);
                let meta = std::fs::symlink_metadata(&full)
                    .map_err(|e| format!("{}: {e}", full.display()))?;
                sha.update(relative.as_os_str().as_encoded_bytes());
                sha.update(
                    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()).to_le_bytes(),
                );
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&full)
                        .map_err(|e| format!("{}: {e}", full.display()))?;
                    sha.update(target.as_os_str().as_encoded_bytes());
                } else if meta.is_file() {
                    let mut file = std::fs::File::open(&full)
                        .map_err(|e| format!("{}: {e}", full.display()))?;
                    std::io::copy(&mut file, &mut sha)
                        .map_err(|e| format!("{}: {e}", full.display()))?;
                }
                sha.update([0]);
            }
        }
        Ok(hex(&sha.finalize()))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("bad pattern {pattern:?}: {e}"))
}

fn parse_ignore(text: &str) -> Result<Vec<Rule>, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (include, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(pattern).unwrap_or_default();
            Ok(Rule {
                matcher: glob(&cleaned.to_string_lossy())
                    .map_err(|e| format!(".dockerignore: {e}"))?,
                include,
            })
        })
        .collect()
}

/// Whether the last rule matching `path` or one of its parents excludes it.
fn ignored(rules: &[Rule], path: &Path) -> bool {
    let mut excluded = false;
    for rule in rules {
        if path
            .ancestors()
            .any(|p| !p.as_os_str().is_empty() && rule.matcher.is_match(p))
        {
            excluded = !rule.include;
        }
    }
    excluded
}

/// A relative path with `.` and `..` resolved; `None` if it climbs out.
fn clean(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in Path::new(path.trim_start_matches('/')).components() {
        match part {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "app.py",
            "src/a.py",
            "src/b.txt",
            "build/out.bin",
            "build/keep.txt",
            ".git/HEAD",
        ] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, file).unwrap();
        }
        std::fs::write(
            dir.path().join(".dockerignore"),
            "# comment\n.git\nbuild\n!build/keep.txt\n**/*.txt\n!src/b.txt\n",
        )
        .unwrap();
        let ctx = Context::open(dir.path()).unwrap();
        (dir, ctx)
    }

    fn paths(sources: Vec<Source>) -> Vec<String> {
        sources
            .into_iter()
            .map(|s| s.path.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn dockerignore_excludes_and_reincludes_with_the_last_rule_winning() {
        let (_dir, ctx) = context();
        assert_eq!(paths(ctx.resolve("app.py").unwrap()), ["app.py"]);
        assert_eq!(
            paths(ctx.resolve("./src/../src/b.txt").unwrap()),
            ["src/b.txt"]
        );
        assert!(ctx.resolve(".git/HEAD").is_err());
        assert!(ctx.resolve("build/out.bin").is_err());
        // Re-included by `!build/keep.txt`, then excluded again by `**/*.txt`.
        assert!(ctx.resolve("build/keep.txt").is_err());
        assert_eq!(
            paths(ctx.resolve("src/*").unwrap()),
            ["src/a.py", "src/b.txt"]
        );
        let err = ctx.resolve("missing.txt").unwrap_err();
        assert!(err.contains("not in the build context"), "{err}");
        assert!(ctx.resolve("../etc/passwd").unwrap_err().contains("leaves"));
    }

    #[test]
    fn hash_follows_content_and_names() {
        let (dir, ctx) = context();
        let one = ctx.hash(&ctx.resolve("src").unwrap()).unwrap();
        assert_eq!(one, ctx.hash(&ctx.resolve("src").unwrap()).unwrap());
        std::fs::write(dir.path().join("src/a.py"), "changed").unwrap();
        let ctx = Context::open(dir.path()).unwrap();
        assert_ne!(one, ctx.hash(&ctx.resolve("src").unwrap()).unwrap());
    }
}
