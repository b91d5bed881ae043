//! `server` commands: uptime, configuration, backups, memory, shutdown.

use std::{fmt::Write, sync::Arc};

use clap::Subcommand;

use crate::{Result, Services};

#[derive(Subcommand, Debug)]
pub(super) enum ServerCommand {
    /// Time since the server started.
    Uptime,
    /// The effective configuration (secrets redacted).
    ShowConfig,
    /// Take an online backup to `database_backup_path`.
    BackupDatabase,
    /// List the backups in `database_backup_path`.
    ListBackups,
    /// Database table sizes and live actors.
    MemoryUsage,
    /// Stop the server cleanly.
    Shutdown,
}

pub(super) async fn run(services: &Arc<Services>, command: ServerCommand) -> Result<String> {
    match command {
        ServerCommand::Uptime => {
            let seconds = services.started.elapsed().as_secs();
            Ok(format!(
                "Up {} days, {} hours, {} minutes, {} seconds.",
                seconds / 86_400,
                seconds % 86_400 / 3_600,
                seconds % 3_600 / 60,
                seconds % 60
            ))
        }
        ServerCommand::ShowConfig => Ok(show_config(services)),
        ServerCommand::BackupDatabase => {
            let info = services.storage.backup().await?;
            Ok(format!(
                "Backup {} complete: {} files, {} bytes, {} media files.",
                info.id,
                info.files,
                info.size_bytes,
                info.media_files.unwrap_or(0)
            ))
        }
        ServerCommand::ListBackups => {
            let backups = services.storage.list_backups().await?;
            if backups.is_empty() {
                return Ok("No backups.".to_owned());
            }
            let mut out = String::from(
                "| id | taken (unix time) | size (bytes) | files | media files |\n\
                 |---|---|---|---|---|\n",
            );
            for backup in backups {
                let media = backup
                    .media_files
                    .map_or_else(|| "none (older backup)".to_owned(), |count| count.to_string());
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {media} |",
                    backup.id, backup.timestamp, backup.size_bytes, backup.files
                );
            }
            Ok(out)
        }
        ServerCommand::MemoryUsage => {
            let mut out =
                String::from("| table | on disk (bytes) | in memtables (bytes) |\n|---|---|---|\n");
            for (table, disk, memory) in services.storage.engine().table_sizes() {
                let _ = writeln!(out, "| {table} | {disk} | {memory} |");
            }
            let memory = services.storage.engine().memory();
            let _ = write!(
                out,
                "\nBlock cache: {} bytes ({} pinned, capacity {} bytes). Memtables: {} bytes \
                 (capacity {} bytes). Table readers: {} bytes.",
                memory.block_cache,
                memory.block_cache_pinned,
                services.config.db_cache_bytes(),
                memory.memtables,
                services.config.db_write_buffer_bytes(),
                memory.table_readers
            );
            out.push_str(
                "\n\n| heap | in use (bytes) | held by the allocator (bytes) |\n|---|---|---|",
            );
            for (allocator, usage) in crate::memory::heaps() {
                let _ = write!(out, "\n| {allocator} | {} | {} |", usage.in_use, usage.resident);
            }
            let _ = write!(
                out,
                "\n\n| in-memory cache (`cache_capacity_modifier` {}) | entries | estimated \
                 bytes |\n|---|---|---|",
                services.config.cache_capacity_modifier,
            );
            for cache in services.storage.cache_usage() {
                let bytes = cache.bytes.map_or_else(|| "-".to_owned(), |bytes| bytes.to_string());
                let _ = write!(out, "\n| {} | {} | {bytes} |", cache.description, cache.entries);
            }
            Ok(out)
        }
        ServerCommand::Shutdown => {
            services.shutdown.trigger();
            Ok("Shutting down.".to_owned())
        }
    }
}

fn redact(table: &mut toml::Table, secrets: &[&str]) {
    for secret in secrets {
        if table.contains_key(*secret) {
            table.insert((*secret).to_owned(), toml::Value::String("<redacted>".to_owned()));
        }
    }
}

fn show_config(services: &Services) -> String {
    let mut value =
        toml::Value::try_from(&*services.config).unwrap_or(toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(table) = &mut value {
        redact(table, &["registration_token"]);
        if let Some(toml::Value::Table(appservices)) = table.get_mut("appservice") {
            for (_, appservice) in appservices.iter_mut() {
                if let toml::Value::Table(appservice) = appservice {
                    redact(appservice, &["as_token", "hs_token"]);
                }
            }
        }
    }
    format!("```toml\n{}\n```", toml::to_string_pretty(&value).unwrap_or_default())
}
