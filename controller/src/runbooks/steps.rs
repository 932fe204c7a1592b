//! Executable runbook steps: fenced blocks tagged `zdeploy-step`, one command per line.
//! They run without a shell: a line is split into words, `{{name}}` placeholders are
//! filled from values given on the command line (never from alert labels), and each value
//! must be a plain word, so nothing can turn into shell syntax or extra arguments.

/// A step: its number (from 1) and its command lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Position among the runbook's steps, from 1.
    pub number: usize,
    /// Command lines, as written.
    pub lines: Vec<String>,
}

/// The executable steps of a runbook body.
pub fn steps(body: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in body.lines() {
        let t = line.trim();
        match &mut current {
            None if t == "```zdeploy-step" => current = Some(Vec::new()),
            Some(lines) if t == "```" => {
                out.push(Step {
                    number: out.len() + 1,
                    lines: std::mem::take(lines),
                });
                current = None;
            }
            Some(lines) if !t.is_empty() => lines.push(t.to_string()),
            _ => {}
        }
    }
    out
}

/// Turns one line into argv, filling `{{name}}` from `values`.
pub fn argv(line: &str, values: &[(String, String)]) -> Result<Vec<String>, String> {
    for (k, v) in values {
        let plain = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c));
        if !plain {
            return Err(format!(
                "--set {k}={v:?}: values may hold only letters, digits and . _ - : /"
            ));
        }
    }
    line.split_whitespace()
        .map(|word| {
            let mut w = word.to_string();
            for (k, v) in values {
                w = w.replace(&format!("{{{{{k}}}}}"), v);
            }
            match w.find("{{") {
                Some(i) => Err(format!("{} has no value: give --set NAME=VALUE", &w[i..])),
                None => Ok(w),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_argv() {
        let body = "text\n```zdeploy-step\nzdeploy rollback {{service}} --reason x\n```\n```sh\nnot a step\n```\n";
        let s = steps(body);
        assert_eq!(s.len(), 1);
        let v = vec![("service".to_string(), "echo".to_string())];
        assert_eq!(
            argv(&s[0].lines[0], &v).unwrap(),
            ["zdeploy", "rollback", "echo", "--reason", "x"]
        );
        assert!(
            argv(&s[0].lines[0], &[])
                .unwrap_err()
                .contains("{{service}}")
        );
        let evil = vec![("service".to_string(), "echo; rm -rf /".to_string())];
        assert!(argv(&s[0].lines[0], &evil).is_err());
    }
}
