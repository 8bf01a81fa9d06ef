// Private to diffpost: not part of the public API, may change without notice.
//
// stb_image and stb_image_write for a header-only library. stb is a single-file library whose implementation
// is compiled where STB_IMAGE_IMPLEMENTATION is defined; a header-only library cannot pick one translation
// unit for it. diffpost therefore compiles a private copy with internal linkage (STB_IMAGE_STATIC and
// STB_IMAGE_WRITE_STATIC make every stb function `static`) in each translation unit that includes
// <diffpost/io/image.hpp>. Consequences:
//   * no duplicate symbols at link time, whatever the number of translation units, and no clash with an stb
//     implementation the application compiles itself in another translation unit;
//   * in one translation unit, include <diffpost/io/image.hpp> BEFORE any stb_image.h / stb_image_write.h of
//   your
//     own (stb's include guards would otherwise hide the static declarations; this is checked below);
//   * if you prefer to provide the stb implementation yourself (one .cpp with STB_IMAGE_IMPLEMENTATION and
//     STB_IMAGE_WRITE_IMPLEMENTATION), define DIFFPOST_EXTERNAL_STB before including diffpost: only the
//     declarations are included then.
#pragma once

#if defined(DIFFPOST_EXTERNAL_STB)
#include <stb_image.h>
#include <stb_image_write.h>
#else
#if defined(STBI_INCLUDE_STB_IMAGE_H) || defined(INCLUDE_STB_IMAGE_WRITE_H)
#error \
    "diffpost: include <diffpost/io/image.hpp> before stb_image.h / stb_image_write.h, \
or define DIFFPOST_EXTERNAL_STB and compile the stb implementation yourself"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#undef STB_IMAGE_IMPLEMENTATION
#undef STB_IMAGE_WRITE_IMPLEMENTATION
#endif
