// What the tool's registries are made of: a compile-time list of entries (each a struct describing one
// method or one task), lookup of an entry by its run-time name, and the set of distinct types the entries
// name (their settings, their operators), gathered into one std::tuple or std::variant.
#pragma once

#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

namespace diffpost::cli {

/// A compile-time list of types.
template <class... Types>
struct TypeList {};

namespace detail {

template <class List, class T>
struct append_unique;
template <class... Types, class T>
struct append_unique<TypeList<Types...>, T> {
  using type =
      std::conditional_t<(std::is_same_v<T, Types> || ...), TypeList<Types...>, TypeList<Types..., T>>;
};

template <class List, class... Rest>
struct unique_of {
  using type = List;
};
template <class List, class First, class... Rest>
struct unique_of<List, First, Rest...> {
  using type = typename unique_of<typename append_unique<List, First>::type, Rest...>::type;
};

template <class List, class... Lists>
struct flatten_unique;
template <class List>
struct flatten_unique<List> {
  using type = List;
};
template <class List, class... Types, class... Lists>
struct flatten_unique<List, TypeList<Types...>, Lists...> {
  using type = typename flatten_unique<typename unique_of<List, Types...>::type, Lists...>::type;
};

template <template <class...> class Target, class List>
struct apply_list;
template <template <class...> class Target, class... Types>
struct apply_list<Target, TypeList<Types...>> {
  using type = Target<Types...>;
};

}  // namespace detail

template <class First, class Second>
struct concat;
template <class... First, class... Second>
struct concat<TypeList<First...>, TypeList<Second...>> {
  using type = TypeList<First..., Second...>;
};

/// The distinct types of `Types...`, in order of first appearance.
template <class... Types>
using UniqueTypes = typename detail::unique_of<TypeList<>, Types...>::type;

/// The distinct types of several lists, in order of first appearance.
template <class... Lists>
using UniqueUnion = typename detail::flatten_unique<TypeList<>, Lists...>::type;

/// A registry with more entries: `Concat<Methods, TypeList<MyMethod>>`.
template <class First, class Second>
using Concat = typename concat<First, Second>::type;

/// `Target<Types...>` for a TypeList<Types...> (e.g. a std::tuple or a std::variant of them).
template <template <class...> class Target, class List>
using Apply = typename detail::apply_list<Target, List>::type;

/// Calls `f.template operator()<Entry>()` for each entry of a TypeList, in order.
template <class... Entries, class F>
void for_each_entry(TypeList<Entries...> /*registry*/, F&& f) {
  (f.template operator()<Entries>(), ...);
}

/// The run-time names of a registry's entries (`Entry::name`), in order.
template <class... Entries>
std::vector<std::string> entry_names(TypeList<Entries...> /*registry*/) {
  return {std::string(Entries::name)...};
}

/// Calls `f.template operator()<Entry>()` for the entry named `name`; returns false when there is none.
template <class... Entries, class F>
bool with_entry(TypeList<Entries...> registry, std::string_view name, F&& f) {
  bool found = false;
  for_each_entry(registry, [&]<class Entry>() {
    if (!found && std::string_view(Entry::name) == name) {
      found = true;
      f.template operator()<Entry>();
    }
  });
  return found;
}

}  // namespace diffpost::cli
