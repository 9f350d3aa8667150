//! Finds and reads a project's files, then hands them to the resolver.

use crate::diag::{Diagnostic, Diagnostics, Span};
use crate::model::Project;
use crate::resolve::Resolver;
use crate::{sql_file, yaml};
use std::path::{Path, PathBuf};

/// Loads and validates the project in `root`. On failure, returns every problem found.
pub fn load_project(root: &Path) -> Result<Project, Diagnostics> {
    let mut r = Resolver::new(root);
    let slate = read_yaml(root, Path::new("slate.yaml"), &mut r.diags, true);
    let models = read_yaml(root, Path::new("src/models.yaml"), &mut r.diags, true);
    let queries = read_yaml(root, Path::new("src/queries.yaml"), &mut r.diags, false);
    if let Some(n) = &slate {
        r.project_file(n);
    }
    if let Some(n) = &models {
        r.models_file(n);
    }
    let mut files = Vec::new();
    collect_files(root, &root.join("src/resolvers"), &mut files);
    files.sort();
    for rel in &files {
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(stem) = name.strip_suffix(".chalk.sql") {
            match std::fs::read_to_string(root.join(rel)) {
                Ok(text) => {
                    let parsed = sql_file::parse(rel, &text, &mut r.diags);
                    r.sql_resolver(stem, rel, parsed);
                }
                Err(e) => r.diags.push(Diagnostic::new(
                    Span::file(rel),
                    format!("cannot read: {e}"),
                )),
            }
        } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && let Some(n) = read_yaml(root, rel, &mut r.diags, true)
        {
            r.model_resolver(rel, &n);
        }
    }
    if let Some(n) = &queries {
        r.queries_file(n);
    }
    r.finish()
}

fn read_yaml(
    root: &Path,
    rel: &Path,
    diags: &mut Vec<Diagnostic>,
    required: bool,
) -> Option<yaml::Node> {
    let text = match std::fs::read_to_string(root.join(rel)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return None,
        Err(e) => {
            let hint = if root.join("slate.yaml").exists() {
                "create it; see the project format in the README".to_string()
            } else {
                format!(
                    "{} is not a Slate project: pass --project DIR",
                    root.display()
                )
            };
            diags.push(
                Diagnostic::new(
                    Span::file(rel),
                    format!("cannot read {}: {e}", rel.display()),
                )
                .hint(hint),
            );
            return None;
        }
    };
    match yaml::parse(rel, &text, &[]) {
        Ok(n) => n,
        Err(d) => {
            diags.push(d);
            None
        }
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
}
