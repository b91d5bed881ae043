//! The contributor docs against the running code: the actor kinds and the admin command groups
//! that `docs/architecture.md` lists in its tables are exactly those a server starts and parses.

use std::collections::BTreeSet;

use crate::common::TestServer;

const ARCHITECTURE: &str = include_str!("../../docs/architecture.md");

/// The backticked first cells of the table under `heading` (a whole heading line), up to the
/// next heading.
fn first_cells(page: &str, heading: &str) -> BTreeSet<String> {
    let mut lines = page.lines().skip_while(|line| line.trim_end() != heading);
    assert!(lines.next().is_some(), "docs/architecture.md lacks the heading `{heading}`");
    let cells: BTreeSet<String> = lines
        .take_while(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .filter_map(|cell| cell.trim().strip_prefix('`')?.strip_suffix('`').map(str::to_owned))
        .collect();
    assert!(!cells.is_empty(), "no table rows under `{heading}`");
    cells
}

#[test]
fn first_cells_read_the_table_under_the_heading_only() {
    let page = "## A\n| `x` | one |\n### Kinds\n\nText.\n\n| kind | what |\n| --- | --- |\n\
                | `user` | a |\n| `room` | `b` |\nnot a row `z`\n## Next\n| `later` | c |\n";
    assert_eq!(
        first_cells(page, "### Kinds"),
        BTreeSet::from(["room".to_owned(), "user".to_owned()])
    );
}

#[tokio::test]
async fn the_architecture_page_lists_every_actor_kind_and_admin_group() {
    let mut server = TestServer::start().await;
    let kinds: BTreeSet<String> =
        server.server().services().actors.kinds().into_iter().map(str::to_owned).collect();
    server.stop().await;
    assert_eq!(
        first_cells(ARCHITECTURE, "### Actor kinds"),
        kinds,
        "the actor kinds in docs/architecture.md are not those a server starts"
    );
    let groups: BTreeSet<String> = tuwunel::admin::group_names().into_iter().collect();
    assert_eq!(
        first_cells(ARCHITECTURE, "### Admin command groups"),
        groups,
        "the admin groups in docs/architecture.md are not those `!admin` parses"
    );
}
