//! What a base build is made of, and its hash.
//!
//! The hash names the cache directory, so it must change whenever the result would:
//! it covers the suite, the variant, the package list and [`Recipe::steps_version`],
//! which is bumped by hand whenever the build steps in `base.rs` change. It does not
//! cover the mirror: any mirror of a suite yields the same build.

use sha2::{Digest, Sha256};

/// The recipe of a debootstrapped template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub suite: &'static str,
    pub variant: &'static str,
    pub packages: &'static [&'static str],
    /// Bump when the build steps change.
    pub steps_version: u32,
}

/// The `base` template: what E2B's default sandbox offers, on Debian bookworm.
pub const BASE: Recipe = Recipe {
    suite: "bookworm",
    variant: "minbase",
    packages: &[
        "ca-certificates",
        "curl",
        "git",
        "iproute2",
        "nodejs",
        "procps",
        "python3",
        "python3-pip",
        "sudo",
    ],
    steps_version: 3,
};

impl Recipe {
    /// 16 hex digits of SHA-256 over a canonical text of the recipe.
    pub fn hash(&self) -> String {
        let mut packages = self.packages.to_vec();
        packages.sort_unstable();
        let text = format!(
            "suite={}\nvariant={}\npackages={}\nsteps={}\n",
            self.suite,
            self.variant,
            packages.join(","),
            self.steps_version
        );
        let digest = Sha256::digest(text.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_short() {
        let h = BASE.hash();
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h, BASE.hash());
    }

    #[test]
    fn hash_ignores_package_order_but_not_content_or_steps() {
        let reordered = Recipe {
            packages: &[
                "sudo",
                "python3",
                "procps",
                "python3-pip",
                "nodejs",
                "iproute2",
                "git",
                "curl",
                "ca-certificates",
            ],
            ..BASE
        };
        assert_eq!(reordered.hash(), BASE.hash());
        let more = Recipe {
            packages: &["python3", "vim"],
            ..BASE
        };
        assert_ne!(more.hash(), BASE.hash());
        let newer_steps = Recipe {
            steps_version: BASE.steps_version + 1,
            ..BASE
        };
        assert_ne!(newer_steps.hash(), BASE.hash());
    }
}
