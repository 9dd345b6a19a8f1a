//! The PostgreSQL cluster under the high-availability set-up fails over without
//! losing a commit: a row committed through the multi-host URL, then a SIGKILL of
//! the primary's postmaster, then the synchronous standby promoted by Patroni and
//! found by the same URL, with the row. Prints how long each step took.

mod common;

use std::time::{Duration, Instant};

use common::TestResult;
use common::ha::HaCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_survives_a_kill_of_the_primary() -> TestResult {
    let mut cluster = HaCluster::start()?;
    let old = cluster.primary()?;
    let standby = cluster.wait_for_sync_standby(Duration::from_secs(30))?;
    assert_ne!(old, standby);
    let url = cluster.url();

    let client = connect(&url).await?;
    assert_eq!(
        server_port(&client).await?,
        old.pg_port,
        "the URL finds the primary"
    );
    client
        .batch_execute("CREATE TABLE failover_check (id int PRIMARY KEY, note text NOT NULL)")
        .await?;
    client
        .execute(
            "INSERT INTO failover_check VALUES (1, $1)",
            &[&"committed before the kill"],
        )
        .await?;

    let killed_at = cluster.kill_primary_postgres()?;
    let promoted = cluster.wait_for_new_primary(Duration::from_secs(30))?;
    let promoted_after = killed_at.elapsed();
    assert_eq!(promoted, standby, "the synchronous standby is promoted");

    // The same URL, connected again, reaches the new primary, which has the row.
    let client = connect_retrying(&url, Duration::from_secs(20)).await?;
    assert_eq!(server_port(&client).await?, promoted.pg_port);
    let row = client
        .query_one("SELECT note FROM failover_check WHERE id = 1", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "committed before the kill");
    let read_after = killed_at.elapsed();

    // Writes go on once a synchronous standby acknowledges them again: in strict
    // synchronous mode, when the old primary has rejoined (scripts/ha-demo).
    tokio::time::timeout(
        Duration::from_secs(30),
        client.execute(
            "INSERT INTO failover_check VALUES (2, $1)",
            &[&"committed after the failover"],
        ),
    )
    .await
    .map_err(|_| "no write was acknowledged within 30 s of the failover")??;
    let written_after = killed_at.elapsed();
    let rejoined = cluster.wait_for_sync_standby(Duration::from_secs(30))?;
    assert_eq!(
        rejoined, old,
        "the old primary is back, as the synchronous standby"
    );

    println!(
        "failover after kill -9 of {}'s postmaster: {} promoted in {:.2} s; the row read \
         through the URL at {:.2} s; a write acknowledged again at {:.2} s",
        old.name,
        promoted.name,
        promoted_after.as_secs_f64(),
        read_after.as_secs_f64(),
        written_after.as_secs_f64(),
    );
    Ok(())
}

async fn connect(url: &str) -> TestResult<tokio_postgres::Client> {
    // The cluster takes TCP logins without TLS too; TLS is the vault's business.
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects, retrying while no node is the read-write primary yet.
async fn connect_retrying(url: &str, limit: Duration) -> TestResult<tokio_postgres::Client> {
    let deadline = Instant::now() + limit;
    loop {
        match connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The port of the node a connection reached.
async fn server_port(client: &tokio_postgres::Client) -> TestResult<u16> {
    let row = client.query_one("SELECT inet_server_port()", &[]).await?;
    Ok(u16::try_from(row.get::<_, i32>(0))?)
}
