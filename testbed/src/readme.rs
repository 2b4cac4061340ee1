//! README drift: the options a README documents against the tools' `--help`.

use std::path::Path;
use std::process::Command;

/// Checks a README against the command lines it documents: every option the tools' `--help`
/// shows must appear in the README, and every option in the README's table rows (rows
/// starting with `` | `--`` or with `` | `TOOL `` for one of the tools) must exist. `tools`
/// pairs each binary with the argument lists whose `--help` to read (`&[]` for the top level,
/// `&["enroll"]` for a subcommand). Returns what drifted.
pub fn readme_drift(readme: &str, tools: &[(&Path, &[&[&str]])]) -> Result<(), String> {
    use std::collections::BTreeSet;
    let options = |text: &str| -> BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2 && !w.ends_with('-'))
            .map(str::to_owned)
            .collect()
    };
    let mut help = String::new();
    let mut names = Vec::new();
    for (bin, commands) in tools {
        names.push(
            bin.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for args in *commands {
            let out = Command::new(bin)
                .args(*args)
                .arg("--help")
                .output()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains("Usage") {
                return Err(format!(
                    "{} {args:?} --help printed no usage",
                    bin.display()
                ));
            }
            help.push_str(&text);
        }
    }
    let (in_help, in_readme) = (options(&help), options(readme));
    let missing: Vec<_> = in_help
        .iter()
        .filter(|o| !["--help", "--version"].contains(&o.as_str()) && !in_readme.contains(*o))
        .collect();
    let table_rows: String = readme
        .lines()
        .filter(|l| {
            l.starts_with("| `--") || names.iter().any(|n| l.starts_with(&format!("| `{n} ")))
        })
        .filter_map(|l| l.split('|').nth(1))
        .collect::<Vec<_>>()
        .join("\n");
    let stale: Vec<_> = options(&table_rows)
        .into_iter()
        .filter(|o| !in_help.contains(o))
        .collect();
    if missing.is_empty() && stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "options missing from the README: {missing:?}; README options the CLI lacks: {stale:?}"
        ))
    }
}

/// [`readme_drift`] of the README of the crate in `manifest_dir` (a test's
/// `env!("CARGO_MANIFEST_DIR")`): `tool` with the argument lists whose `--help` to read.
pub fn crate_readme_drift(
    manifest_dir: &str,
    tool: &Path,
    commands: &[&[&str]],
) -> Result<(), String> {
    let path = Path::new(manifest_dir).join("README.md");
    let readme = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    readme_drift(&readme, &[(tool, commands)])
}

/// The fenced shell blocks (```` ```sh ````) of a README section: those between the heading
/// line `heading` (e.g. `"## A host from scratch"`, matched exactly) and the next heading of
/// any level, in order, each without its fences. A `#` line inside a block is a shell
/// comment, not a heading. For tests that run a README's commands as written, so that the
/// README and the test cannot drift apart.
pub fn readme_shell_blocks(readme: &str, heading: &str) -> Result<Vec<String>, String> {
    readme_blocks(readme, heading, "sh")
}

/// Like [`readme_shell_blocks`], for the blocks fenced as ```` ```LANG ```` (`xml`, `diff`,
/// ...).
pub fn readme_blocks(readme: &str, heading: &str, lang: &str) -> Result<Vec<String>, String> {
    let mut lines = readme.lines();
    if !lines.by_ref().any(|l| l.trim_end() == heading) {
        return Err(format!("the README has no heading {heading:?}"));
    }
    let opening = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    let mut in_other_fence = false;
    for line in lines {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            (Some(_), true) => blocks.extend(current.take()),
            (None, true) if in_other_fence => in_other_fence = false,
            (None, true) if line.trim() == opening => current = Some(String::new()),
            (None, true) => in_other_fence = true,
            (None, false) if !in_other_fence && line.starts_with('#') => break,
            (None, false) => {}
        }
    }
    if current.is_some() {
        return Err(format!("an unclosed {opening} block under {heading:?}"));
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_drift_finds_missing_and_stale_options() {
        let ls = Path::new("/bin/ls");
        let all = |extra: &str| {
            let help = Command::new(ls).arg("--help").output().unwrap().stdout;
            format!("{}\n{extra}", String::from_utf8_lossy(&help))
        };
        let commands: &[&[&str]] = &[&[]];
        assert!(readme_drift(&all(""), &[(ls, commands)]).is_ok());
        let err = readme_drift("| `ls --all` | x |", &[(ls, commands)]).unwrap_err();
        assert!(err.contains("--recursive"), "{err}");
        let err =
            readme_drift(&all("| `ls --no-such-option` | x |"), &[(ls, commands)]).unwrap_err();
        assert!(err.contains("--no-such-option"), "{err}");
    }

    #[test]
    fn readme_shell_blocks_of_one_section() {
        let readme = "# T\n## A\ntext\n```sh\necho a1\n# a comment\n```\n```\n# not a heading\n```\n\
                      ```sh\necho a2\n```\n### Sub\n```sh\necho sub\n```\n## B\n```sh\necho b\n```\n";
        assert_eq!(
            readme_shell_blocks(readme, "## A").unwrap(),
            vec![
                "echo a1\n# a comment\n".to_string(),
                "echo a2\n".to_string()
            ]
        );
        assert_eq!(
            readme_shell_blocks(readme, "### Sub").unwrap(),
            vec!["echo sub\n"]
        );
        assert_eq!(
            readme_shell_blocks(readme, "## B").unwrap(),
            vec!["echo b\n"]
        );
        assert!(readme_shell_blocks(readme, "## C").is_err());
        assert!(readme_shell_blocks("## A\n```sh\necho\n", "## A").is_err());
    }
}
