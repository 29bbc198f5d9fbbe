//! The Python kernel's command line: ipykernel started by silo's own launcher
//! (`ipykernel_launcher.py`), which reads shell requests on the kernel's main thread.

/// The launcher, passed to Python with `-c`.
const IPYKERNEL_LAUNCHER: &str = include_str!("ipykernel_launcher.py");

/// `argv` with `-m ipykernel_launcher` replaced by `-c <silo's launcher>`; the interpreter,
/// its flags and the arguments after stay. A command line without that pair (a kernelspec
/// of its own making) is returned unchanged.
pub fn with_silo_launcher(mut argv: Vec<String>) -> Vec<String> {
    if let Some(at) = argv
        .windows(2)
        .position(|pair| pair[0] == "-m" && pair[1] == "ipykernel_launcher")
    {
        argv[at] = "-c".into();
        argv[at + 1] = IPYKERNEL_LAUNCHER.into();
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn module_launch_becomes_the_silo_launcher() {
        let argv = with_silo_launcher(strings(&[
            "/opt/python/bin/python",
            "-Xfrozen_modules=off",
            "-m",
            "ipykernel_launcher",
            "-f",
            "/run/k.json",
        ]));
        assert_eq!(
            argv[..3],
            strings(&["/opt/python/bin/python", "-Xfrozen_modules=off", "-c"])
        );
        assert_eq!(argv[3], IPYKERNEL_LAUNCHER);
        assert_eq!(argv[4..], strings(&["-f", "/run/k.json"]));
    }

    #[test]
    fn other_command_lines_are_left_alone() {
        let own = strings(&["python3", "-m", "my_kernel", "-f", "/run/k.json"]);
        assert_eq!(with_silo_launcher(own.clone()), own);
        let trailing = strings(&["python3", "-m"]);
        assert_eq!(with_silo_launcher(trailing.clone()), trailing);
    }
}
