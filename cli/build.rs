//! Puts the commit the binaries were built from into `--version`:
//! `MEGALITH_COMMIT` from the environment (a build without the git
//! history, such as the container image's, passes it in), else `git
//! rev-parse` of the checkout (with `-dirty` when files differ from it),
//! else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=MEGALITH_COMMIT");
    let commit = match std::env::var("MEGALITH_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_string(),
        _ => {
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                // Again when HEAD moves, a branch gets a commit, or files
                // are staged.
                println!("cargo:rerun-if-changed={dir}/HEAD");
                println!("cargo:rerun-if-changed={dir}/refs/heads");
                println!("cargo:rerun-if-changed={dir}/index");
            }
            match git(&["rev-parse", "--short=12", "HEAD"]) {
                Some(commit) => {
                    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                        .is_some_and(|s| !s.is_empty());
                    if dirty {
                        format!("{commit}-dirty")
                    } else {
                        commit
                    }
                }
                None => "unknown".to_string(),
            }
        }
    };
    println!("cargo:rustc-env=MEGALITH_COMMIT={commit}");
}
