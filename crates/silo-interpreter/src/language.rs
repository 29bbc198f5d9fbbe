//! The languages a client may ask for, and how a kernelspec's `language` maps onto them.
//!
//! The SDK sends free text (`"Python"`, `"js"`, `"ts"`…); matching ignores case and accepts the
//! short aliases the reference server accepts. A language is only usable when a kernelspec for
//! it was found (see [`crate::kernelspec`]).

use std::fmt;
use std::str::FromStr;

/// A language the interpreter knows how to drive (env vars, working directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    Python,
    JavaScript,
    TypeScript,
    Bash,
    R,
    Java,
}

impl Language {
    /// Every language, in the order they are listed to clients.
    pub const ALL: [Language; 6] = [
        Language::Python,
        Language::JavaScript,
        Language::TypeScript,
        Language::Bash,
        Language::R,
        Language::Java,
    ];

    /// The canonical name, as returned in `Context.language`.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Bash => "bash",
            Language::R => "r",
            Language::Java => "java",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A language name nobody knows; carries the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown language {0:?}")]
pub struct UnknownLanguage(pub String);

impl FromStr for Language {
    type Err = UnknownLanguage;

    /// Parses client input and kernelspec `language` fields alike (`"python3"` and `"sh"`
    /// appear in the wild).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Language::Python),
            "javascript" | "js" | "node" | "nodejs" => Ok(Language::JavaScript),
            "typescript" | "ts" => Ok(Language::TypeScript),
            "bash" | "sh" | "shell" => Ok(Language::Bash),
            "r" => Ok(Language::R),
            "java" => Ok(Language::Java),
            _ => Err(UnknownLanguage(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_aliases_ignoring_case() {
        for (input, want) in [
            ("python", Language::Python),
            ("Python", Language::Python),
            ("PYTHON3", Language::Python),
            ("js", Language::JavaScript),
            ("JavaScript", Language::JavaScript),
            ("ts", Language::TypeScript),
            ("TypeScript", Language::TypeScript),
            ("bash", Language::Bash),
            (" Bash ", Language::Bash),
            ("R", Language::R),
            ("java", Language::Java),
        ] {
            assert_eq!(input.parse::<Language>(), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_unknown_names() {
        assert_eq!(
            "cobol".parse::<Language>(),
            Err(UnknownLanguage("cobol".into()))
        );
        assert!("".parse::<Language>().is_err());
    }

    #[test]
    fn canonical_names_round_trip() {
        for lang in Language::ALL {
            assert_eq!(lang.as_str().parse::<Language>(), Ok(lang));
        }
    }
}
