//! `--chown` (and the owner of mkdir/mkfile) resolved the way BuildKit's file backend does: names against the
//! target tree's /etc/passwd and /etc/group, read inside that tree; numeric ids as they are; a numeric user
//! without a group gets the same number as gid, a named one its primary group.
//!
//! One deliberate difference: BuildKit silently uses 0 for a name it cannot find, which turns a typo into
//! root-owned files; here that is an error (except for `root`, which a tree without /etc/passwd still means).

use kiln_llb::Owner;

use kiln_fsutil::passwd::{Groups, Passwd};
use kiln_fsutil::root::Root;

use super::FileOpError;

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// The (uid, gid) that `owner` names in `target`.
pub(super) fn resolve(target: &Root, owner: &Owner) -> Result<(u32, u32), FileOpError> {
    let (uid, mut gid) = match owner.user.parse::<u32>() {
        Ok(id) => (id, id),
        Err(_) => read_small_file(target, PASSWD)?
            .and_then(|text| Passwd::parse(&text).by_name(&owner.user).map(|u| (u.uid, u.gid)))
            .or_else(|| (owner.user == "root").then_some((0, 0)))
            .ok_or_else(|| FileOpError::UnknownUser {
                name: owner.user.clone(),
            })?,
    };
    if let Some(group) = &owner.group {
        gid = match group.parse::<u32>() {
            Ok(id) => id,
            Err(_) => read_small_file(target, GROUP)?
                .and_then(|text| Groups::parse(&text).by_name(group).map(|g| g.gid))
                .or_else(|| (group == "root").then_some(0))
                .ok_or_else(|| FileOpError::UnknownGroup { name: group.clone() })?,
        };
    }
    Ok((uid, gid))
}

/// Reads a file of the target, resolved inside it; `None` when it does not exist or is not a regular file.
fn read_small_file(target: &Root, path: &str) -> Result<Option<String>, FileOpError> {
    let bytes = target
        .read_file(path.as_bytes())
        .map_err(|source| FileOpError::Io {
            op: "read",
            path: path.to_string(),
            source,
        })?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}
