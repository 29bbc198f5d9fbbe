//! E2B's build steps (what the e2b 2.x SDK's `Template` sends) as the Dockerfile they
//! stand for, so one engine builds both.

use silo_protocol::templates::{BuildStart, BuildStep};

use crate::dockerfile::{Command, Dockerfile, Located, ParseError, Step};

/// Images the SDK names that silo has as templates of its own.
const IMAGE_TEMPLATES: &[(&str, &str)] = &[
    ("e2bdev/base", "base"),
    ("e2bdev/code-interpreter", "code-interpreter"),
];

/// What a build starts from: `fromTemplate`, or `fromImage`: one of silo's templates
/// (E2B's base images are silo's `base` and `code-interpreter`), else an image to pull.
pub fn parent_template(start: &BuildStart) -> Result<String, ParseError> {
    let refuse = |message: String| Err(ParseError { line: 0, message });
    match (&start.from_template, &start.from_image) {
        (Some(template), _) => Ok(template.clone()),
        (None, Some(image)) => {
            let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
            let name = name.strip_prefix("docker.io/").unwrap_or(name);
            if let Some((_, template)) = IMAGE_TEMPLATES.iter().find(|(i, _)| *i == name) {
                return Ok((*template).to_owned());
            }
            if tag == "latest" && !name.contains('/') && !image.contains(':') {
                // A silo template named like the image: `FROM base` in a Dockerfile.
                return Ok(name.to_owned());
            }
            // Pulled from its registry when the build starts.
            Ok(image.clone())
        }
        (None, None) => refuse("the build names no base: give fromTemplate (or fromImage)".into()),
    }
}

/// The Dockerfile the steps stand for; each step's line is its number (from 1).
pub fn to_dockerfile(start: &BuildStart) -> Result<Dockerfile, ParseError> {
    let from = parent_template(start)?;
    let mut steps = Vec::new();
    for (i, step) in start.steps.iter().enumerate() {
        let line = i + 1;
        steps.push(Located {
            line,
            text: describe(step),
            item: to_step(line, step)?,
        });
    }
    Ok(Dockerfile {
        global_args: Vec::new(),
        from: Located {
            line: 0,
            text: format!("FROM {from}"),
            item: from,
        },
        steps,
    })
}

/// A step as a Dockerfile line would say it, for logs.
fn describe(step: &BuildStep) -> String {
    let arg = |i: usize| step.args.get(i).map(String::as_str).unwrap_or_default();
    match step.kind.to_ascii_uppercase().as_str() {
        "RUN" if !arg(1).is_empty() => format!("RUN {} (as {})", arg(0), arg(1)),
        "COPY" => {
            let mut text = "COPY".to_owned();
            if !arg(2).is_empty() {
                text.push_str(&format!(" --chown={}", arg(2)));
            }
            if !arg(3).is_empty() {
                text.push_str(&format!(" --chmod={}", arg(3)));
            }
            format!("{text} {} {}", arg(0), arg(1))
        }
        "ENV" => {
            let pairs: Vec<String> = step
                .args
                .chunks(2)
                .map(|p| {
                    format!(
                        "{}={}",
                        p[0],
                        p.get(1).map(String::as_str).unwrap_or_default()
                    )
                })
                .collect();
            format!("ENV {}", pairs.join(" "))
        }
        kind => format!("{kind} {}", step.args.join(" ")),
    }
}

fn to_step(line: usize, step: &BuildStep) -> Result<Step, ParseError> {
    let args = &step.args;
    let arg = |i: usize| args.get(i).filter(|a| !a.is_empty()).cloned();
    let need = |n: usize| {
        if args.len() < n {
            Err(ParseError {
                line,
                message: format!("{} needs {n} argument(s), got {}", step.kind, args.len()),
            })
        } else {
            Ok(())
        }
    };
    Ok(match step.kind.to_ascii_uppercase().as_str() {
        "RUN" => {
            need(1)?;
            let command = Command::Shell(args[0].clone());
            match arg(1) {
                Some(user) => Step::RunAs(command, user),
                None => Step::Run(command),
            }
        }
        "COPY" => {
            need(2)?;
            Step::Copy {
                sources: vec![args[0].clone()],
                dest: args[1].clone(),
                chown: arg(2),
                chmod: arg(3),
                extract: false,
            }
        }
        "ENV" => {
            if !args.len().is_multiple_of(2) {
                return Err(ParseError {
                    line,
                    message: "ENV needs name, value pairs".into(),
                });
            }
            Step::Env(
                args.chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect(),
            )
        }
        "WORKDIR" => {
            need(1)?;
            Step::Workdir(args[0].clone())
        }
        "USER" => {
            need(1)?;
            Step::User(args[0].clone())
        }
        other => {
            return Err(ParseError {
                line,
                message: format!(
                    "step type {other:?} is not supported: use RUN, COPY, ENV, WORKDIR or USER"
                ),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: &str, args: &[&str]) -> BuildStep {
        BuildStep {
            kind: kind.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..BuildStep::default()
        }
    }

    #[test]
    fn steps_become_dockerfile_steps() {
        let start = BuildStart {
            from_image: Some("e2bdev/base:latest".into()),
            steps: vec![
                step("COPY", &["app.py", "/app/", "user", "0755"]),
                step("RUN", &["pip install flask", "root"]),
                step("RUN", &["echo hi"]),
                step("ENV", &["A", "1", "B", "2"]),
                step("WORKDIR", &["/app"]),
                step("USER", &["user"]),
            ],
            ..BuildStart::default()
        };
        let file = to_dockerfile(&start).unwrap();
        assert_eq!(file.from.item, "base");
        let items: Vec<&Step> = file.steps.iter().map(|s| &s.item).collect();
        assert_eq!(
            items[0],
            &Step::Copy {
                sources: vec!["app.py".into()],
                dest: "/app/".into(),
                chown: Some("user".into()),
                chmod: Some("0755".into()),
                extract: false
            }
        );
        assert_eq!(
            items[1],
            &Step::RunAs(Command::Shell("pip install flask".into()), "root".into())
        );
        assert_eq!(items[2], &Step::Run(Command::Shell("echo hi".into())));
        assert_eq!(
            items[3],
            &Step::Env(vec![("A".into(), "1".into()), ("B".into(), "2".into())])
        );
        assert_eq!(file.steps[4].line, 5);
        let texts: Vec<&str> = file.steps.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts[..4],
            [
                "COPY --chown=user --chmod=0755 app.py /app/",
                "RUN pip install flask (as root)",
                "RUN echo hi",
                "ENV A=1 B=2"
            ]
        );
    }

    #[test]
    fn refuses_what_silo_cannot_build() {
        let from_registry = BuildStart {
            from_image: Some("python:3".into()),
            ..BuildStart::default()
        };
        assert_eq!(to_dockerfile(&from_registry).unwrap().from.item, "python:3");
        let odd = BuildStart {
            from_template: Some("base".into()),
            steps: vec![step("EXPOSE", &["80"])],
            ..BuildStart::default()
        };
        let err = to_dockerfile(&odd).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("EXPOSE"), "{}", err.message);
        assert_eq!(
            parent_template(&BuildStart {
                from_image: Some("base".into()),
                ..BuildStart::default()
            })
            .unwrap(),
            "base"
        );
    }
}
