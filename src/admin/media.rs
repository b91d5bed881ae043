//! `media` commands, with Tuwunel's names where it has them: storage usage (against the
//! per-user quota), what is known about a file, deleting media, and what the retention
//! policy deletes.

use std::{fmt::Write, sync::Arc};

use clap::Subcommand;
use ruma::{MxcUri, OwnedMxcUri};

use crate::{Error, Result, Services};

#[derive(Subcommand, Debug)]
pub(super) enum MediaCommand {
    /// Bytes and files stored, in total and for the owners storing the most (users, and
    /// the servers whose media is cached here).
    Usage {
        /// How many users to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// What is known about one media item.
    GetFileInfo {
        #[arg(long)]
        mxc: OwnedMxcUri,
    },
    /// Delete one media item (its file, thumbnails and record).
    Delete {
        #[arg(long)]
        mxc: OwnedMxcUri,
    },
    /// Delete every media item a local user uploaded.
    DeleteAllFromUser { user_id: String },
    /// What the retention policy (`media_retention_local_days`, `media_retention_remote_days`)
    /// would delete now, oldest use first; with `--apply`, delete it now instead of at the
    /// next hourly housekeeping.
    Retention {
        /// How many items to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        apply: bool,
    },
}

fn parts(mxc: &MxcUri) -> Result<(String, String)> {
    let (server_name, media_id) = mxc
        .parts()
        .map_err(|error| Error::invalid_param(format!("{mxc} is not an mxc:// URI: {error}")))?;
    Ok((server_name.to_string(), media_id.to_owned()))
}

pub(super) async fn run(services: &Arc<Services>, command: MediaCommand) -> Result<String> {
    let media = &services.media;
    match command {
        MediaCommand::Usage { limit } => {
            let owners = media.usage()?;
            let bytes: u64 = owners.iter().map(|(_, usage)| usage.bytes).sum();
            let files: u64 = owners.iter().map(|(_, usage)| usage.files).sum();
            let mut out = format!(
                "Media stored: {files} files, {bytes} bytes, of {} owners (users, and the \
                 servers whose media is cached here).\n",
                owners.len()
            );
            if let Some(quota) = media.quota() {
                let _ = writeln!(out, "Quota per local user: {quota} bytes.");
            }
            for (owner, usage) in owners.iter().take(limit) {
                let _ = write!(out, "- {owner}: {} files, {} bytes", usage.files, usage.bytes);
                match media.quota() {
                    Some(quota) if owner.starts_with('@') && quota > 0 => {
                        let percent = u128::from(usage.bytes) * 100 / u128::from(quota);
                        let _ = writeln!(out, " ({percent}% of the quota)");
                    }
                    _ => out.push('\n'),
                }
            }
            Ok(out)
        }
        MediaCommand::Retention { limit, apply } => {
            let policy = media.retention();
            if policy.is_off() {
                return Ok("No media retention is configured (media_retention_local_days and \
                           media_retention_remote_days are 0): all media is kept."
                    .to_owned());
            }
            if apply {
                let (deleted, bytes) = media.apply_retention().await?;
                return Ok(format!("Deleted {deleted} unused media items ({bytes} bytes)."));
            }
            let unused = media.unused()?;
            let bytes: u64 = unused.iter().map(|item| item.size).sum();
            let mut out = format!(
                "Retention (local media {} days, remote media {} days, 0 = forever) would \
                 delete {} media items ({bytes} bytes) now.\n",
                policy.local_days,
                policy.remote_days,
                unused.len()
            );
            for item in unused.iter().take(limit) {
                let _ = writeln!(
                    out,
                    "- mxc://{}/{}: {} bytes, last used {} ms",
                    item.server_name, item.media_id, item.size, item.last_used_ms
                );
            }
            Ok(out)
        }
        MediaCommand::GetFileInfo { mxc } => {
            let (server_name, media_id) = parts(&mxc)?;
            let record = media
                .stored(&server_name, &media_id)?
                .ok_or_else(|| Error::not_found(format!("{mxc} is not stored here")))?;
            Ok(format!(
                "{mxc}: owner {}, {} bytes, type {}, file name {}, created {} ms, sha-256 {}{}",
                record.owner,
                record.size,
                record.content_type.as_deref().unwrap_or("unknown"),
                record.filename.as_deref().unwrap_or("none"),
                record.created_ms,
                record.sha256.as_deref().unwrap_or("unknown"),
                if record.is_pending() { " (created, not uploaded yet)" } else { "" },
            ))
        }
        MediaCommand::Delete { mxc } => {
            let (server_name, media_id) = parts(&mxc)?;
            match media.delete(&server_name, &media_id).await? {
                Some(record) => Ok(format!("Deleted {mxc} ({} bytes).", record.size)),
                None => Err(Error::not_found(format!("{mxc} is not stored here"))),
            }
        }
        MediaCommand::DeleteAllFromUser { user_id } => {
            let user = super::users::local_user(services, &user_id)?;
            let mut deleted = 0_usize;
            let mut bytes = 0_u64;
            for (server_name, media_id) in media.owned_by(user.as_str())? {
                if let Some(record) = media.delete(&server_name, &media_id).await? {
                    deleted += 1;
                    bytes += record.size;
                }
            }
            Ok(format!("Deleted {deleted} media items ({bytes} bytes) uploaded by {user}."))
        }
    }
}
