//! Dockerfiles, parsed into the instructions a template build runs.
//!
//! silo builds without a Docker engine and supports what a sandbox template needs:
//! `FROM`, `RUN`, `COPY`, `ADD`, `ENV`, `ARG`, `WORKDIR`, `USER` and `LABEL`. Anything
//! else is refused with its line number and what to do instead. Line continuations
//! (`\`), comments and both the shell and the JSON ("exec") form are understood as
//! Docker does. `$VAR` and `${VAR}` are left in place here: the build substitutes them
//! with the ARG and ENV values in scope at each step ([`substitute`]).

use std::collections::HashMap;
use std::fmt;

/// A Dockerfile's instructions, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// ARGs declared before the first FROM: they may only be used in FROM.
    pub global_args: Vec<Arg>,
    /// The image or template named by FROM, as written (variables not substituted).
    pub from: Located<String>,
    pub steps: Vec<Located<Step>>,
}

/// Something with the line it starts on (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub line: usize,
    /// The instruction as written, continuation lines joined, for logs and errors.
    pub text: String,
    pub item: T,
}

/// One build step after FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Run(Command),
    /// A RUN as another user than the current USER, which it leaves unchanged (E2B's
    /// `run_cmd(cmd, user=...)`; Dockerfiles have no such form).
    RunAs(Command, String),
    /// COPY, or ADD (`extract`: local tar archives are unpacked, as Docker does).
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
        chmod: Option<String>,
        extract: bool,
    },
    Env(Vec<(String, String)>),
    Arg(Arg),
    Workdir(String),
    User(String),
    Label(Vec<(String, String)>),
}

/// A RUN command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run by `/bin/sh -c`.
    Shell(String),
    /// Run as is (the JSON form).
    Exec(Vec<String>),
}

impl Command {
    /// The argv to run.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
            Command::Exec(argv) => argv.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    pub default: Option<String>,
}

/// Why a Dockerfile cannot be built, with the line it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn error<T>(line: usize, message: impl fmt::Display) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        message: message.to_string(),
    })
}

/// Parse a Dockerfile's text.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let mut global_args = Vec::new();
    let mut from: Option<Located<String>> = None;
    let mut steps = Vec::new();
    for (line, instruction) in logical_lines(text)? {
        let (keyword, rest) = match instruction.split_once(char::is_whitespace) {
            Some((keyword, rest)) => (keyword, rest.trim()),
            None => (instruction.as_str(), ""),
        };
        let keyword = keyword.to_ascii_uppercase();
        if rest.is_empty() {
            return error(line, format!("{keyword} needs arguments"));
        }
        if rest.starts_with("<<") {
            return error(line, "heredocs (<<EOF) are not supported: put the script in a file and COPY it, or use RUN with && and \\");
        }
        fn located<T>(line: usize, text: &str, item: T) -> Located<T> {
            Located {
                line,
                text: text.to_owned(),
                item,
            }
        }
        if keyword == "FROM" {
            if from.is_some() {
                return error(line, "a second FROM: multi-stage builds are not supported; build the first stage as a template of its own and start FROM it");
            }
            from = Some(located(line, &instruction, parse_from(line, rest)?));
            continue;
        }
        if keyword == "ARG" && from.is_none() {
            global_args.push(parse_arg(line, rest)?);
            continue;
        }
        if from.is_none() {
            return error(
                line,
                format!(
                    "{keyword} before FROM: a Dockerfile starts with FROM (ARG may come before it)"
                ),
            );
        }
        let step = match keyword.as_str() {
            "RUN" => Step::Run(parse_command(line, rest)?),
            "COPY" => parse_copy(line, rest, false)?,
            "ADD" => parse_copy(line, rest, true)?,
            "ENV" => Step::Env(parse_pairs(line, rest, true)?),
            "ARG" => Step::Arg(parse_arg(line, rest)?),
            "WORKDIR" => Step::Workdir(rest.to_owned()),
            "USER" => Step::User(rest.to_owned()),
            "LABEL" => Step::Label(parse_pairs(line, rest, false)?),
            "CMD" | "ENTRYPOINT" => return error(line, format!("{keyword} is not supported: a sandbox runs no entrypoint; give the template a start command (--start-cmd) to run a process in every sandbox")),
            "EXPOSE" => return error(line, "EXPOSE is not needed: every port of a sandbox is reachable through silo's proxy; remove it"),
            "HEALTHCHECK" => return error(line, "HEALTHCHECK is not supported: give the template a ready command (--ready-cmd) instead"),
            "VOLUME" | "STOPSIGNAL" | "ONBUILD" | "SHELL" | "MAINTAINER" => {
                return error(line, format!("{keyword} is not supported by silo's template builds; remove it (supported: FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL)"))
            }
            other => return error(line, format!("unknown instruction {other:?} (supported: FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL)")),
        };
        steps.push(located(line, &instruction, step));
    }
    let Some(from) = from else {
        return error(
            1,
            "no FROM: a Dockerfile names what it builds on, e.g. `FROM base`",
        );
    };
    Ok(Dockerfile {
        global_args,
        from,
        steps,
    })
}

/// Instructions with their first line number: comments and blank lines dropped,
/// continuation lines joined (a comment inside a continuation is skipped, as in Docker).
fn logical_lines(text: &str) -> Result<Vec<(usize, String)>, ParseError> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        let (start, mut joined) = pending.take().unwrap_or((number, String::new()));
        if !joined.is_empty() && !body.is_empty() {
            joined.push(' ');
        }
        joined.push_str(body.trim_end());
        if continues {
            pending = Some((start, joined));
        } else if !joined.trim().is_empty() {
            out.push((start, joined.trim().to_owned()));
        }
    }
    if let Some((start, _)) = pending {
        return error(
            start,
            "the last instruction ends with a line continuation (\\) and nothing after it",
        );
    }
    Ok(out)
}

fn parse_from(line: usize, rest: &str) -> Result<String, ParseError> {
    let words = split_words(line, rest)?;
    if words.iter().any(|w| w.starts_with("--")) {
        return error(
            line,
            "FROM takes no flags (--platform): silo builds for the host",
        );
    }
    match words.as_slice() {
        [image] => Ok(image.clone()),
        [_, as_kw, _] if as_kw.eq_ignore_ascii_case("as") => error(
            line,
            "FROM ... AS names a build stage: multi-stage builds are not supported",
        ),
        _ => error(line, "FROM takes one image or template name"),
    }
}

fn parse_command(line: usize, rest: &str) -> Result<Command, ParseError> {
    if let Some(argv) = json_array(line, rest)? {
        if argv.is_empty() {
            return error(line, "RUN [] runs nothing");
        }
        return Ok(Command::Exec(argv));
    }
    if rest.starts_with("--") {
        return error(
            line,
            "RUN flags (--mount, --network, --security) are not supported",
        );
    }
    Ok(Command::Shell(rest.to_owned()))
}

fn parse_copy(line: usize, rest: &str, extract: bool) -> Result<Step, ParseError> {
    let keyword = if extract { "ADD" } else { "COPY" };
    let mut chown = None;
    let mut chmod = None;
    let mut rest = rest;
    while let Some(flag_and_more) = rest.strip_prefix("--") {
        let (flag, more) = flag_and_more
            .split_once(char::is_whitespace)
            .unwrap_or((flag_and_more, ""));
        match flag.split_once('=') {
            Some(("chown", value)) if !value.is_empty() => chown = Some(value.to_owned()),
            Some(("chmod", value)) if value.len() <= 4 && u32::from_str_radix(value, 8).is_ok() => {
                chmod = Some(value.to_owned())
            }
            Some(("from", _)) => return error(line, format!("{keyword} --from copies from a build stage: multi-stage builds are not supported")),
            _ => return error(line, format!("{keyword} flag --{flag} is not supported (supported: --chown=USER[:GROUP], --chmod=OCTAL)")),
        }
        rest = more.trim_start();
    }
    let mut words = match json_array(line, rest)? {
        Some(words) => words,
        None => split_words(line, rest)?,
    };
    if words.len() < 2 {
        return error(
            line,
            format!("{keyword} needs at least one source and a destination"),
        );
    }
    let dest = words.pop().unwrap_or_default();
    if extract {
        if let Some(url) = words.iter().find(|s| s.contains("://")) {
            return error(line, format!("ADD of a URL ({url}) is not supported: download it with RUN curl, or put it in the build context"));
        }
    }
    Ok(Step::Copy {
        sources: words,
        dest,
        chown,
        chmod,
        extract,
    })
}

fn parse_arg(line: usize, rest: &str) -> Result<Arg, ParseError> {
    let words = split_words(line, rest)?;
    let [word] = words.as_slice() else {
        return error(line, "ARG declares one name, optionally with =default");
    };
    let (name, default) = match word.split_once('=') {
        Some((name, default)) => (name, Some(default.to_owned())),
        None => (word.as_str(), None),
    };
    check_name(line, name)?;
    Ok(Arg {
        name: name.to_owned(),
        default,
    })
}

/// `KEY=VALUE ...`, or the legacy `KEY VALUE WITH SPACES` (`legacy_ok`, for ENV).
fn parse_pairs(
    line: usize,
    rest: &str,
    legacy_ok: bool,
) -> Result<Vec<(String, String)>, ParseError> {
    let words = split_words(line, rest)?;
    let first_has_eq = words.first().is_some_and(|w| w.contains('='));
    if !first_has_eq {
        if legacy_ok && words.len() >= 2 {
            let (name, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            check_name(line, name)?;
            let value = split_words(line, value.trim())?.join(" ");
            return Ok(vec![(name.to_owned(), value)]);
        }
        return error(line, "expected KEY=VALUE pairs");
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => error(line, format!("{word:?} is not KEY=VALUE")),
        })
        .collect()
}

fn check_name(line: usize, name: &str) -> Result<(), ParseError> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        error(line, format!("{name:?} is not a valid variable name"))
    }
}

/// The JSON form `["a", "b"]`, if `rest` is one.
fn json_array(line: usize, rest: &str) -> Result<Option<Vec<String>>, ParseError> {
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<Vec<String>>(rest) {
        Ok(words) => Ok(Some(words)),
        // Docker runs a line that only looks like JSON by the shell; so do we.
        Err(_) if !rest.ends_with(']') => Ok(None),
        Err(e) => error(line, format!("bad JSON array: {e}")),
    }
}

/// Split on unquoted whitespace; quotes are removed, `\` escapes the next character
/// (inside single quotes nothing is special).
pub fn split_words(line: usize, text: &str) -> Result<Vec<String>, ParseError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('\''), c) => word.push(c),
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return error(line, "unterminated quote");
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Replace `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}` with
/// values from `vars` (unset: empty); `\$` is a literal `$`.
pub fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let value = |name: &str| vars.get(name).filter(|v| !v.is_empty()).cloned();
                let expanded = if let Some((name, default)) = inner.split_once(":-") {
                    value(name).unwrap_or_else(|| substitute(default, vars))
                } else if let Some((name, alternative)) = inner.split_once(":+") {
                    value(name)
                        .map(|_| substitute(alternative, vars))
                        .unwrap_or_default()
                } else {
                    vars.get(&inner).cloned().unwrap_or_default()
                };
                out.push_str(&expanded);
            }
            '$' if chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') =>
            {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || c == '_') {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"# syntax is ignored
ARG BASE=base
FROM ${BASE}
ENV APP_HOME=/srv/app GREETING="hello world"
ENV LEGACY value with spaces
ARG VERSION=1.0
WORKDIR $APP_HOME
COPY --chown=user:user app.py requirements.txt ./
ADD ["vendor.tar", "/opt/vendor/"]
RUN pip install -r requirements.txt \
    # a comment inside a continuation
    && echo done
RUN ["python3", "-c", "print(1)"]
USER user
LABEL org.example.version="${VERSION}" team=ai
"#;

    #[test]
    fn parses_every_supported_instruction() {
        let file = parse(EXAMPLE).expect("parses");
        assert_eq!(
            file.global_args,
            vec![Arg {
                name: "BASE".into(),
                default: Some("base".into())
            }]
        );
        assert_eq!((file.from.line, file.from.item.as_str()), (3, "${BASE}"));
        let steps: Vec<_> = file
            .steps
            .iter()
            .map(|s| (s.line, s.item.clone()))
            .collect();
        assert_eq!(
            steps,
            vec![
                (
                    4,
                    Step::Env(vec![
                        ("APP_HOME".into(), "/srv/app".into()),
                        ("GREETING".into(), "hello world".into())
                    ])
                ),
                (
                    5,
                    Step::Env(vec![("LEGACY".into(), "value with spaces".into())])
                ),
                (
                    6,
                    Step::Arg(Arg {
                        name: "VERSION".into(),
                        default: Some("1.0".into())
                    })
                ),
                (7, Step::Workdir("$APP_HOME".into())),
                (
                    8,
                    Step::Copy {
                        sources: vec!["app.py".into(), "requirements.txt".into()],
                        dest: "./".into(),
                        chown: Some("user:user".into()),
                        chmod: None,
                        extract: false
                    }
                ),
                (
                    9,
                    Step::Copy {
                        sources: vec!["vendor.tar".into()],
                        dest: "/opt/vendor/".into(),
                        chown: None,
                        chmod: None,
                        extract: true
                    }
                ),
                (
                    10,
                    Step::Run(Command::Shell(
                        "pip install -r requirements.txt && echo done".into()
                    ))
                ),
                (
                    13,
                    Step::Run(Command::Exec(vec![
                        "python3".into(),
                        "-c".into(),
                        "print(1)".into()
                    ]))
                ),
                (14, Step::User("user".into())),
                (
                    15,
                    Step::Label(vec![
                        ("org.example.version".into(), "${VERSION}".into()),
                        ("team".into(), "ai".into())
                    ])
                ),
            ]
        );
    }

    fn refusal(text: &str) -> ParseError {
        parse(text).expect_err("refused")
    }

    #[test]
    fn refuses_what_it_cannot_build_with_the_line_and_a_way_out() {
        let e = refusal("FROM base\nRUN true\nCMD [\"sleep\"]\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("--start-cmd"), "{e}");
        let e = refusal("FROM base\n\nFROBNICATE x\n");
        assert_eq!(e.line, 3);
        assert!(
            e.to_string().contains("unknown instruction \"FROBNICATE\""),
            "{e}"
        );
        assert!(refusal("FROM a AS b\n").message.contains("multi-stage"));
        assert!(refusal("FROM a\nFROM b\n").message.contains("multi-stage"));
        assert!(refusal("FROM a\nCOPY --from=x a b\n")
            .message
            .contains("multi-stage"));
        assert!(refusal("FROM a\nADD https://x.example/a.tgz /a\n")
            .message
            .contains("URL"));
        assert!(refusal("FROM a\nRUN <<EOF\n").message.contains("heredocs"));
        assert!(refusal("RUN true\n").message.contains("before FROM"));
        assert!(refusal("# only a comment\n").message.contains("no FROM"));
        assert!(refusal("FROM a\nRUN true \\\n")
            .message
            .contains("continuation"));
        assert!(refusal("FROM a\nENV A=\"open\n")
            .message
            .contains("unterminated"));
        assert!(refusal("FROM a\nCOPY only-one\n")
            .message
            .contains("destination"));
        assert!(refusal("FROM a\nRUN [\"a\", 1]\n").message.contains("JSON"));
        assert!(refusal("FROM a\nARG 1X\n")
            .message
            .contains("variable name"));
        assert!(refusal("FROM a\nCOPY --chmod=999 a b\n")
            .message
            .contains("--chmod"));
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let file = parse("from base\nrun echo hi\n").expect("parses");
        assert_eq!(file.from.item, "base");
        assert_eq!(
            file.steps[0].item,
            Step::Run(Command::Shell("echo hi".into()))
        );
    }

    #[test]
    fn substitutes_variables_as_docker_does() {
        let vars: HashMap<String, String> = [("A", "1"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(substitute("$A-${A}/x", &vars), "1-1/x");
        assert_eq!(substitute("${MISSING:-d$A}", &vars), "d1");
        assert_eq!(substitute("${EMPTY:-d}", &vars), "d");
        assert_eq!(substitute("${A:+set}${MISSING:+no}", &vars), "set");
        assert_eq!(substitute(r"\$A $MISSING. $ 5$", &vars), "$A . $ 5$");
    }

    #[test]
    fn splits_words_with_quotes_and_escapes() {
        assert_eq!(
            split_words(1, r#"a "b c" 'd $e' f\ g"#).unwrap(),
            vec!["a", "b c", "d $e", "f g"]
        );
        assert_eq!(split_words(1, r#"K="v w""#).unwrap(), vec!["K=v w"]);
    }
}
