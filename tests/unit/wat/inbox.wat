;; An atom with an inbox (atoms/ABI.md "The inbox"), for the runtime's tests.
;; Inbox at 1024 (input capacity 256), reply buffer at 2048, bump arena from 4096.
;; Methods, by their first letter:
;;   e(cho)    replies with its arguments, through the slot
;;   w(here)   replies with the address of its arguments (4 bytes, little-endian)
;;   n(ested)  puts "O" in the slot, then blocks in invoke (the host may run a
;;             handler or a nested call meanwhile) and yield; the slot reply stands
;;   r(entry)  like n, then replies (through the slot) with its own arguments
;;   i(mport)  puts "S" in the slot, then empties it and replies "M" through hx.reply
;;   b(ig)     a slot length over any payload limit
;;   p(ointer) a slot pointing outside the memory
;;   t(rap)    puts "T" in the slot and traps
;;   z         no reply at all
;;   h         replies with the byte the interrupt handler last wrote
(module
  (import "hx" "reply" (func $reply (param i32 i32)))
  (import "hx" "invoke" (func $invoke (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "hx" "yield" (func $yield (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 1028) "\ff\ff\ff\ff\00\01\00\00")
  (data (i32.const 512) "self")
  (func (export "hx_abi_version") (result i32) (i32.const 1))
  (func (export "hx_inbox") (result i32) (i32.const 1024))
  (func (export "hx_alloc") (param $len i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $p))
  (func $slot (param $ptr i32) (param $len i32)
    (i32.store (i32.const 1024) (local.get $ptr))
    (i32.store (i32.const 1028) (local.get $len)))
  (func $say (param $byte i32)
    (i32.store8 (i32.const 2048) (local.get $byte))
    (call $slot (i32.const 2048) (i32.const 1)))
  (func $echo (param $a i32) (param $al i32)
    (memory.copy (i32.const 2048) (local.get $a) (local.get $al))
    (call $slot (i32.const 2048) (local.get $al)))
  (func $block
    (drop (call $invoke (i32.const 512) (i32.const 4) (i32.const 512) (i32.const 4)
                        (i32.const 0) (i32.const 0) (i32.const 600)))
    (drop (call $yield)))
  (func (export "hx_interrupt") (param $code i32) (param $p i32) (param $l i32)
    (i32.store8 (i32.const 700) (i32.const 0x49))
    (i32.store8 (i32.const 2049) (i32.const 0x49))
    (call $slot (i32.const 2049) (i32.const 1)))
  (func (export "hx_invoke") (param $m i32) (param $ml i32) (param $a i32) (param $al i32)
                             (result i32) (local $c i32)
    (local.set $c (i32.load8_u (local.get $m)))
    (if (i32.eq (local.get $c) (i32.const 0x65)) (then
      (call $echo (local.get $a) (local.get $al)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x77)) (then
      (i32.store (i32.const 2048) (local.get $a))
      (call $slot (i32.const 2048) (i32.const 4)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x6e)) (then
      (call $say (i32.const 0x4f)) (call $block) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x72)) (then
      (call $say (i32.const 0x4f)) (call $block)
      (call $echo (local.get $a) (local.get $al)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x69)) (then
      (call $say (i32.const 0x53))
      (i32.store (i32.const 1028) (i32.const -1))
      (i32.store8 (i32.const 600) (i32.const 0x4d))
      (call $reply (i32.const 600) (i32.const 1)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x62)) (then
      (call $slot (i32.const 2048) (i32.const 60000)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x70)) (then
      (call $slot (i32.const 65530) (i32.const 100)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x74)) (then
      (call $say (i32.const 0x54)) (unreachable)))
    (if (i32.eq (local.get $c) (i32.const 0x68)) (then
      (call $slot (i32.const 700) (i32.const 1)) (return (i32.const 0))))
    (i32.const 0)))
