//! The `sudo` command line, parsed the way sudo(8) reads it: options up to the first
//! non-option (or `--`), then `VAR=value` assignments, then the command.
//!
//! Options that only matter to sudo's own password and timestamp handling (`-n`, `-S`,
//! `-A`, `-p`, `-k`…) are accepted and do nothing: the broker never asks for a password.

use super::protocol::{Mode, PreserveEnv, Request};

/// What an invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `-h`: print the usage, succeed.
    Help,
    /// `-V`: print the version, succeed.
    Version,
    /// `-k` or `-K` without a command: nothing to forget, succeed.
    Forget,
    /// `-v`: succeed if the caller may use sudo.
    Validate(Request),
    /// `-l`: say what the caller may run.
    List(Request),
    Run(Request),
}

/// A command line sudo would refuse; the text follows `sudo: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub const USAGE: &str = "\
usage: sudo -h | -K | -k | -V
usage: sudo -v [-AknS] [-g group] [-p prompt] [-u user]
usage: sudo -l [-AknS] [-g group] [-p prompt] [-u user]
usage: sudo [-AEHknPS] [-D directory] [-g group] [-p prompt] [-u user] [VAR=value]
            [-i | -s] [command [arg ...]]
(silo: sudo is served by the sandbox's agent; no password is ever asked)
";

/// Options that take a value: `-u root`, `-uroot`, `--user=root`, `--user root`.
/// (`-h` is special: help alone, a host name when attached.)
fn takes_value(option: char) -> bool {
    matches!(
        option,
        'u' | 'g' | 'p' | 'D' | 'C' | 'U' | 'T' | 'R' | 'r' | 't'
    )
}

/// The short letter a long option stands for.
fn long_to_short(name: &str) -> Option<char> {
    Some(match name {
        "askpass" => 'A',
        "background" => 'b',
        "close-from" => 'C',
        "chdir" => 'D',
        "preserve-env" => 'E',
        "edit" => 'e',
        "group" => 'g',
        "set-home" => 'H',
        "help" => '?',
        "host" => 'h',
        "login" => 'i',
        "remove-timestamp" => 'K',
        "reset-timestamp" => 'k',
        "list" => 'l',
        "non-interactive" => 'n',
        "preserve-groups" => 'P',
        "prompt" => 'p',
        "chroot" => 'R',
        "role" => 'r',
        "stdin" => 'S',
        "shell" => 's',
        "type" => 't',
        "command-timeout" => 'T',
        "other-user" => 'U',
        "user" => 'u',
        "version" => 'V',
        "validate" => 'v',
        _ => return None,
    })
}

#[derive(Default)]
struct Flags {
    request: Request,
    help: bool,
    version: bool,
    forget: bool,
    validate: bool,
    list: bool,
}

impl Flags {
    fn apply(&mut self, option: char, value: Option<String>) -> Result<(), UsageError> {
        let r = &mut self.request;
        match option {
            // sudo's password and timestamp handling: nothing to do here.
            'A' | 'n' | 'S' | 'P' | 'p' | 'C' | 'U' => {}
            'k' | 'K' => self.forget = true,
            'E' => r.preserve_env = PreserveEnv::All,
            'H' => r.set_home = true,
            'i' => r.login = true,
            's' => r.shell = true,
            'l' => self.list = true,
            'v' => self.validate = true,
            'V' => self.version = true,
            '?' => self.help = true,
            'u' => r.user = value,
            'g' => r.group = value,
            'D' => r.chdir = value,
            'b' | 'e' | 'R' | 'r' | 't' | 'T' => {
                return Err(UsageError(format!(
                    "option -{option} is not supported in silo sandboxes"
                )))
            }
            'h' => unreachable!("-h is help unless it has a value, handled by the caller"),
            other => return Err(UsageError(format!("invalid option -- '{other}'"))),
        }
        Ok(())
    }
}

/// `--preserve-env=A,B`: adds names, unless `-E` already keeps everything.
fn preserve_names(request: &mut Request, list: &str) {
    let names = list.split(',').filter(|n| !n.is_empty()).map(str::to_owned);
    match &mut request.preserve_env {
        PreserveEnv::All => {}
        PreserveEnv::Names(kept) => kept.extend(names),
        reset @ PreserveEnv::Reset => *reset = PreserveEnv::Names(names.collect()),
    }
}

/// A `NAME=value` argument with a valid variable name.
fn assignment(arg: &str) -> Option<(String, String)> {
    let (name, value) = arg.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    let valid = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then(|| (name.to_owned(), value.to_owned()))
}

/// Parse the arguments after `sudo` (argv[1..]).
pub fn parse(args: &[String]) -> Result<Action, UsageError> {
    let mut flags = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let option = long_to_short(name)
                .ok_or_else(|| UsageError(format!("unrecognized option '--{name}'")))?;
            if option == 'E' {
                match inline {
                    Some(list) => preserve_names(&mut flags.request, &list),
                    None => flags.apply('E', None)?,
                }
                continue;
            }
            let value = if takes_value(option) || option == 'h' {
                match inline {
                    Some(v) => Some(v),
                    None => {
                        let v = args.get(i).cloned().ok_or_else(|| {
                            UsageError(format!("option '--{name}' requires an argument"))
                        })?;
                        i += 1;
                        Some(v)
                    }
                }
            } else if inline.is_some() {
                return Err(UsageError(format!(
                    "option '--{name}' doesn't allow an argument"
                )));
            } else {
                None
            };
            if option == 'h' {
                // --host: sudo runs commands on this machine only.
                continue;
            }
            flags.apply(option, value)?;
            continue;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
            i -= 1; // the command starts here
            break;
        };
        for (at, option) in cluster.char_indices() {
            let rest = &cluster[at + option.len_utf8()..];
            if option == 'h' {
                // Alone, -h asks for help; with a value it names a host (ignored).
                if !rest.is_empty() {
                    break;
                }
                flags.help = true;
                continue;
            }
            if takes_value(option) {
                let value = if rest.is_empty() {
                    let v = args.get(i).cloned().ok_or_else(|| {
                        UsageError(format!("option requires an argument -- '{option}'"))
                    })?;
                    i += 1;
                    v
                } else {
                    rest.to_owned()
                };
                flags.apply(option, Some(value))?;
                break;
            }
            flags.apply(option, None)?;
        }
    }

    let mut rest = args[i.min(args.len())..].iter();
    let mut command = Vec::new();
    for arg in rest.by_ref() {
        match assignment(arg) {
            Some(pair) => flags.request.assignments.push(pair),
            None => {
                command.push(arg.clone());
                break;
            }
        }
    }
    command.extend(rest.cloned());
    flags.request.command = command;
    finish(flags)
}

/// Choose the action, and refuse the combinations sudo refuses.
fn finish(flags: Flags) -> Result<Action, UsageError> {
    let Flags {
        mut request,
        help,
        version,
        forget,
        validate,
        list,
    } = flags;
    if help {
        return Ok(Action::Help);
    }
    if version {
        return Ok(Action::Version);
    }
    if request.login && request.shell {
        return Err(UsageError(
            "you may not specify both the -i and -s options".into(),
        ));
    }
    if list || validate {
        request.mode = Mode::Check;
        return Ok(if list {
            Action::List(request)
        } else {
            Action::Validate(request)
        });
    }
    if request.command.is_empty() && !request.login && !request.shell {
        if forget {
            return Ok(Action::Forget);
        }
        return Err(UsageError("a command is required".into()));
    }
    Ok(Action::Run(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Action, UsageError> {
        let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        parse(&args)
    }

    fn run(line: &str) -> Request {
        match parse_str(line) {
            Ok(Action::Run(r)) => r,
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_plain_command_runs_as_root_with_the_reset_environment() {
        let r = run("apt-get install -y curl");
        assert_eq!(r.command, words(&["apt-get", "install", "-y", "curl"]));
        assert_eq!(r.user, None);
        assert_eq!(r.preserve_env, PreserveEnv::Reset);
        assert_eq!(r.mode, Mode::Run);
    }

    #[test]
    fn options_stop_at_the_command() {
        // The command's own options are not sudo's.
        let r = run("-n ls -l -u");
        assert_eq!(r.command, words(&["ls", "-l", "-u"]));
        assert_eq!(r.user, None);
        let r = run("-- -weird-name arg");
        assert_eq!(r.command, words(&["-weird-name", "arg"]));
    }

    #[test]
    fn user_and_group_take_values_every_way() {
        for line in [
            "-u user id",
            "-uuser id",
            "--user=user id",
            "--user user id",
        ] {
            assert_eq!(run(line).user.as_deref(), Some("user"), "{line}");
        }
        let r = run("-nEu #1000 -g sudo id");
        assert_eq!(r.user.as_deref(), Some("#1000"));
        assert_eq!(r.group.as_deref(), Some("sudo"));
        assert_eq!(r.preserve_env, PreserveEnv::All);
        assert_eq!(r.command, words(&["id"]));
    }

    #[test]
    fn preserve_env_forms() {
        assert_eq!(run("-E env").preserve_env, PreserveEnv::All);
        assert_eq!(run("--preserve-env env").preserve_env, PreserveEnv::All);
        assert_eq!(
            run("--preserve-env=A,B --preserve-env=C env").preserve_env,
            PreserveEnv::Names(words(&["A", "B", "C"]))
        );
        assert_eq!(
            run("-E --preserve-env=A env").preserve_env,
            PreserveEnv::All
        );
    }

    #[test]
    fn assignments_before_the_command_are_environment() {
        let r = run("-H DEBIAN_FRONTEND=noninteractive X_1=a=b apt-get FOO=bar");
        assert!(r.set_home);
        assert_eq!(
            r.assignments,
            vec![
                ("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string()),
                ("X_1".to_string(), "a=b".to_string()),
            ]
        );
        assert_eq!(r.command, words(&["apt-get", "FOO=bar"]));
        // Not a variable name: the command.
        assert_eq!(run("1X=2 cmd").command, words(&["1X=2", "cmd"]));
    }

    #[test]
    fn shells_need_no_command() {
        let r = run("-i");
        assert!(r.login && r.command.is_empty());
        let r = run("-s echo hi");
        assert!(r.shell);
        assert_eq!(r.command, words(&["echo", "hi"]));
        assert!(parse_str("-i -s").is_err());
    }

    #[test]
    fn informational_actions() {
        assert_eq!(parse_str("-h"), Ok(Action::Help));
        assert_eq!(parse_str("--help"), Ok(Action::Help));
        assert_eq!(parse_str("-V"), Ok(Action::Version));
        assert_eq!(parse_str("-k"), Ok(Action::Forget));
        assert_eq!(parse_str("-K"), Ok(Action::Forget));
        assert!(matches!(parse_str("-k true"), Ok(Action::Run(_))));
        match parse_str("-n -v") {
            Ok(Action::Validate(r)) => assert_eq!(r.mode, Mode::Check),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_str("-l"), Ok(Action::List(_))));
        // -h with an attached value names a host, and is ignored.
        assert_eq!(run("-hlocalhost true").command, words(&["true"]));
        assert_eq!(parse_str("-h localhost true"), Ok(Action::Help));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert_eq!(
            parse_str("-x true"),
            Err(UsageError("invalid option -- 'x'".into()))
        );
        assert_eq!(
            parse_str("--frobnicate true"),
            Err(UsageError("unrecognized option '--frobnicate'".into()))
        );
        assert!(parse_str("-u").is_err());
        assert!(parse_str("--login=yes").is_err());
        assert!(parse_str("").is_err(), "no command");
        assert!(parse_str("-n").is_err(), "no command");
        assert!(parse_str("-b sleep 1").is_err(), "unsupported");
    }

    #[test]
    fn chdir() {
        let r = run("-D /tmp pwd");
        assert_eq!(r.chdir.as_deref(), Some("/tmp"));
        assert_eq!(run("--chdir=/etc pwd").chdir.as_deref(), Some("/etc"));
    }
}
