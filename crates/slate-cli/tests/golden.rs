//! Golden tests of the CLI's diagnostics: each `cases/<name>/case.txt` edits a copy of the fraud
//! example, runs `slate`, and compares exit code, stdout and stderr with `expected.txt`.
//! `UPDATE_GOLDEN=1 cargo test -p slate-cli --test golden` rewrites the expectations.
//!
//! case.txt lines: `args ARGS...`, `file PATH`, `replace TEXT`, `with TEXT` (`\n` for newlines),
//! `remove PATH`, `write PATH CONTENT` (a new project file), `data missing`, `datafile NAME CONTENT` (a file in the data directory),
//! `model NAME` (the model conformance corpus's NAME in place of the fraud model).

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if ["data", ".slate", "training", "tests", "target"].contains(&n.as_ref()) {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).expect("copy");
        }
    }
}

fn run_case(dir: &Path) -> (String, String) {
    let spec = std::fs::read_to_string(dir.join("case.txt")).expect("case.txt");
    let tmp = tempfile::tempdir().expect("tempdir");
    let project = tmp.path().join("project");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud");
    copy_dir(&example, &project);
    let mut data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir data");
    let mut args: Vec<String> = vec![];
    let mut file: Option<PathBuf> = None;
    let mut pending: Option<String> = None;
    for line in spec.lines() {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.replace("\\n", "\n");
        match cmd {
            "args" => args = rest.split_whitespace().map(str::to_string).collect(),
            "file" => file = Some(project.join(rest)),
            "replace" => pending = Some(rest),
            "with" => {
                let f = file.as_ref().expect("`file` before `with`");
                let old = pending.take().expect("`replace` before `with`");
                let text = std::fs::read_to_string(f).expect("read");
                assert!(
                    text.contains(&old),
                    "{}: `{old}` not found in {}",
                    dir.display(),
                    f.display()
                );
                std::fs::write(f, text.replacen(&old, &rest, 1)).expect("write");
            }
            "remove" => std::fs::remove_file(project.join(rest)).expect("remove"),
            "write" => {
                let (name, content) = rest.split_once(' ').expect("write PATH CONTENT");
                std::fs::write(project.join(name), content).expect("write project file");
            }
            "data" => data = tmp.path().join("no-such-dir"),
            "model" => {
                let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../slate-model/tests/corpus")
                    .join(&rest);
                std::fs::copy(&corpus, project.join("models/fraud_model.onnx"))
                    .expect("copy corpus model");
            }
            "datafile" => {
                let (name, content) = rest.split_once(' ').expect("datafile NAME CONTENT");
                std::fs::write(data.join(name), content).expect("write data file");
            }
            "" => {}
            other => panic!("{}: unknown case command {other}", dir.display()),
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_slate"))
        .arg("--project")
        .arg(&project)
        .arg("--data-dir")
        .arg(&data)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .args(&args)
        .env_remove("SLATE_DATA_DIR")
        .env_remove("SLATE_STATE_DIR")
        .output()
        .expect("run slate");
    let scrub =
        |b: &[u8]| String::from_utf8_lossy(b).replace(&tmp.path().display().to_string(), "$TMP");
    let got = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().map_or("signal".into(), |c| c.to_string()),
        scrub(&out.stdout),
        scrub(&out.stderr)
    );
    let nothing_written = !tmp.path().join("state").exists();
    (
        got,
        if nothing_written {
            String::new()
        } else {
            "state directory was written".into()
        },
    )
}

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("cases")
        .flatten()
        .map(|e| e.path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the golden cases, found {}",
        cases.len()
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let (got, written) = run_case(case);
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if !written.is_empty() && !name.starts_with("ok_") {
            failures.push(format!("{name}: {written}"));
        }
        let path = case.join("expected.txt");
        if update {
            std::fs::write(&path, &got).expect("write expected");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != got {
            failures.push(format!("{name}:\n--- want\n{want}\n--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
