use clap::Subcommand;
#[derive(Subcommand)]
pub enum Bench {
    Connect,
}
pub fn run(_b: Bench) -> anyhow::Result<()> {
    Ok(())
}
