//! The enforcer's kernel programs. Entry points live in one module per hook family and only
//! gather inputs; `enforcer_common::verdict` decides.
#![no_std]
#![no_main]

mod connect;
mod destination;
mod identity;
mod maps;
mod policy;
mod sock_create;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach a panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
