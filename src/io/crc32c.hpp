// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final XOR
// 0xFFFFFFFF), as iSCSI, ext4 and SSE4.2's crc32 instruction compute it. Check value:
// crc32c("123456789") = 0xE3069283. Table-driven, one byte at a time: the state files it
// guards are small next to the I/O that reads them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bn::io {

// The CRC of `size` bytes; `crc` continues an earlier result (0 to start).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0) noexcept;

}  // namespace bn::io
