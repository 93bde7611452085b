//! The enforcer's kernel programs. Entry points live in one module per hook family and only
//! gather inputs; `enforcer_common::verdict` decides.
#![no_std]
#![no_main]

mod address;
mod connect;
mod conns;
mod counters;
mod destination;
mod egress;
mod events;
mod flows;
mod identity;
mod ingress;
mod local;
mod maps;
mod packet;
mod policy;
mod protocol;
mod refusals;
mod sendmsg;
mod sock_addr;
mod sock_create;
mod source;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach a panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
