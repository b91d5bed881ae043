//! Command-line arguments, with Tuwunel's spellings (`-c`, `-O`, `--execute`).

use std::path::PathBuf;

use clap::Parser;

/// The `tuwunel` command line.
#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "tuwunel",
    version,
    about = "A Matrix homeserver: one binary, embedded RocksDB, actors inside.",
    long_about = "A Matrix homeserver: one binary, embedded RocksDB, actors inside.\n\n\
                  Without any configuration file it starts a development server on \
                  127.0.0.1:8008 named `localhost`, with its database in ./tuwunel_db."
)]
pub struct Args {
    /// Path to a configuration file. Repeat to layer several files; later ones override
    /// earlier ones. Also read from CONDUIT_CONFIG, CONDUWUIT_CONFIG and TUWUNEL_CONFIG.
    #[arg(short, long = "config", value_name = "PATH")]
    pub config: Vec<PathBuf>,

    /// Override a configuration key with TOML `key=value` syntax, relative to [global], e.g.
    /// -O port=8448 or -O 'well_known.client="https://m.example.com"'. Repeatable; applied
    /// after files and environment variables.
    #[arg(short = 'O', long = "option", value_name = "KEY=VAL")]
    pub option: Vec<String>,

    /// Run an admin command once the server has started, e.g. --execute "server
    /// backup-database". Repeatable; runs after the config's `admin_execute` list. The server
    /// keeps running unless a command is `server shutdown`.
    #[arg(long, value_name = "COMMAND")]
    pub execute: Vec<String>,

    /// Restore an online backup into `database_path` before starting (the latest when no ID
    /// is given; IDs are listed by `server list-backups`). The database directory must not
    /// exist yet: move the damaged one aside first.
    #[arg(long, value_name = "ID", num_args = 0..=1, require_equals = true, default_missing_value = "0")]
    pub restore_backup: Option<u32>,

    /// Print the example configuration (every key with its documentation and default) and
    /// exit.
    #[arg(long)]
    pub generate_config: bool,
}
